"""`StorageProducer` and `StorageConsumer` on every storage backend."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from looplane._clock import FakeClock
from looplane.broker import JSONSerializer, Rejected, StorageConsumer, StorageProducer
from looplane.errors import BrokerError, InvalidArguments, LeaseLost, SerializationError
from looplane.storage import NewTask, QueueCounts
from looplane.task import register_task, registry
from tests.conftest import open_test_storage

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from looplane.storage import Claim, StorageBackend, Watcher
    from looplane.task import Task

    TaskFunc = Callable[..., Any]

# Above this size the producer encodes and the consumer decodes in a thread.
BIG_ARG = "x" * 300_000


@pytest.fixture
def echo() -> Iterator[TaskFunc]:
    """A task function registered under a unique name, forgotten after the test."""
    name = f"tests.broker.echo.{uuid.uuid4().hex}"

    async def echo(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    register_task(name=name, retries=5, timeout=7)(echo)
    yield echo
    registry.remove(name)


@pytest.fixture
def echo_name(echo: TaskFunc) -> str:
    return registry.lookup(echo).name


async def receive(consumer: StorageConsumer) -> Task:
    task = await consumer.receive(timeout=10)
    assert task is not None
    return task


async def wait_for_counts(storage: StorageBackend, watcher: Watcher, want: QueueCounts) -> None:
    """Wait, woken by `watcher` (armed before the change), until storage counts `want`."""
    async with asyncio.timeout(10):
        while (seen := await storage.counts()) != want:
            await watcher.wait(10)
    assert seen == want


# Sending ---------------------------------------------------------------------------------


async def test_send_registered_function_applies_its_options(
    storage: StorageBackend, echo: TaskFunc, echo_name: str
) -> None:
    producer, consumer = StorageProducer(storage), StorageConsumer(storage)

    sent = await producer.send(echo, 1, "two", x=[3])

    assert await storage.counts() == QueueCounts(ready=1)
    got = await receive(consumer)
    assert (got.id, got.name, got.args, got.kwargs) == (sent.id, echo_name, (1, "two"), {"x": [3]})
    assert (got.max_retries, got.timeout) == (5, 7)
    # A task with a timeout is leased for longer than the timeout (PF-04); renew a third of it.
    assert consumer.renew_interval_s > 7 / 3
    await consumer.close()


async def test_send_by_name_needs_no_registration(storage: StorageBackend) -> None:
    producer, consumer = StorageProducer(storage), StorageConsumer(storage)

    sent = await producer.send("tests.broker.elsewhere", 1, retries=0)

    got = await receive(consumer)
    assert (got.id, got.name, got.args, got.max_attempts) == (sent.id, sent.name, (1,), 1)
    assert got.name == "tests.broker.elsewhere"
    await consumer.close()


async def test_send_batch_stores_every_task_in_one_write(
    storage: StorageBackend, echo: TaskFunc, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    enqueue = storage.enqueue

    async def counting_enqueue(tasks: Sequence[NewTask]) -> None:
        writes.append(len(tasks))
        await enqueue(tasks)

    monkeypatch.setattr(storage, "enqueue", counting_enqueue)

    sent = await StorageProducer(storage).send_batch([(echo, (i,), {}) for i in range(3)])

    assert writes == [3]
    assert await storage.counts() == QueueCounts(ready=3)
    consumer = StorageConsumer(storage)
    assert [t.id for t in await consumer.receive_batch(10, timeout=10)] == [t.id for t in sent]
    await consumer.close()


async def test_send_batch_gives_each_function_its_own_options(
    storage: StorageBackend, echo: TaskFunc, echo_name: str
) -> None:
    # A batch resolves each task function's options once; calls of different functions
    # (by object or by name) must still each get their own.
    calls: list[Any] = [
        (echo, (1,), {}),
        ("tests.broker.elsewhere", (), {}),
        (echo, (2,), {"k": 3}),
        (echo_name, (), {}),
    ]

    sent = await StorageProducer(storage, retries=1).send_batch(calls)

    assert [(t.name, t.max_retries, t.timeout) for t in sent] == [
        (echo_name, 5, 7),
        ("tests.broker.elsewhere", 1, None),
        (echo_name, 5, 7),
        (echo_name, 5, 7),
    ]
    assert [(t.args, t.kwargs) for t in sent] == [((1,), {}), ((), {}), ((2,), {"k": 3}), ((), {})]
    assert len({t.id for t in sent}) == 4
    consumer = StorageConsumer(storage)
    got = await consumer.receive_batch(10, timeout=10)
    assert [(t.id, t.name, t.args, t.created_at) for t in got] == [
        (t.id, t.name, t.args, t.created_at) for t in sent
    ]
    await consumer.close()


async def test_send_batch_checks_every_call_of_a_repeated_function(storage: StorageBackend) -> None:
    name = f"tests.broker.add.{uuid.uuid4().hex}"

    @register_task(name=name)
    async def add(a: int, b: int) -> int:
        return a + b

    producer = StorageProducer(storage)
    try:
        with pytest.raises(InvalidArguments, match=r"^call 2 of the batch: task '.*'"):
            await producer.send_batch([(add, (1, 2), {}), (add, (3, 4), {}), (add, (5,), {})])
    finally:
        registry.remove(name)

    assert await storage.counts() == QueueCounts()


@pytest.mark.parametrize(
    ("args", "kwargs", "path"),
    [
        pytest.param((1, object()), {}, "args[1]", id="positional"),
        pytest.param((), {"x": {1, 2}}, "kwargs['x']", id="keyword"),
    ],
)
async def test_send_unencodable_argument_names_it_and_stores_nothing(
    storage: StorageBackend,
    echo: TaskFunc,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    path: str,
) -> None:
    producer = StorageProducer(storage)

    pattern = rf"^call 1 of the batch: {re.escape(path)} has type "
    with pytest.raises(TypeError, match=pattern) as caught:
        await producer.send_batch([(echo, ("fine",), {}), (echo, args, kwargs)])

    assert isinstance(caught.value, SerializationError)
    assert caught.value.path == path
    assert await storage.counts() == QueueCounts()


async def test_send_over_max_payload_bytes_is_refused_naming_the_setting(
    storage: StorageBackend, echo: TaskFunc
) -> None:
    """https://github.com/celery/celery/issues/318: refuse at send, never lose later (PF-12)."""
    producer = StorageProducer(storage, max_payload_bytes=1000)

    with pytest.raises(
        SerializationError, match=r"over the limit of 1000 bytes \(raise max_payload_bytes"
    ):
        await producer.send(echo, "x" * 2000)

    assert await storage.counts() == QueueCounts()


async def test_send_and_receive_a_large_payload_intact(
    storage: StorageBackend, echo: TaskFunc
) -> None:
    producer, consumer = StorageProducer(storage), StorageConsumer(storage)

    await producer.send(echo, BIG_ARG, big=BIG_ARG)

    got = await receive(consumer)
    assert got.args == (BIG_ARG,)
    assert got.kwargs == {"big": BIG_ARG}
    await consumer.close()


# Receiving -------------------------------------------------------------------------------


async def test_receive_on_empty_storage_returns_none_after_timeout(
    storage: StorageBackend,
) -> None:
    async with StorageConsumer(storage) as consumer:
        assert await consumer.receive(timeout=0.1) is None


async def test_receive_wakes_for_a_task_sent_while_waiting(
    storage: StorageBackend, echo: TaskFunc
) -> None:
    async with StorageConsumer(storage) as consumer:
        receiving = asyncio.ensure_future(consumer.receive(timeout=60))
        await asyncio.sleep(0)  # let the receive start waiting

        sent = await StorageProducer(storage).send(echo)

        got = await asyncio.wait_for(receiving, timeout=10)
        assert got is not None
        assert got.id == sent.id


async def test_receive_sets_attempt_and_fetched_at(
    fake_storage: StorageBackend, clock: FakeClock, echo: TaskFunc
) -> None:
    await StorageProducer(fake_storage).send(echo)
    consumer = StorageConsumer(fake_storage, clock=clock)

    got = await receive(consumer)

    assert got.attempt == 1
    assert got.fetched_at == datetime.fromtimestamp(clock.time(), UTC)
    await consumer.nack(got)
    clock.advance(3)
    again = await receive(consumer)
    assert again.attempt == 2
    assert again.fetched_at == datetime.fromtimestamp(clock.time(), UTC)


# Acking and nacking ----------------------------------------------------------------------


async def test_ack_removes_the_task(storage: StorageBackend, echo: TaskFunc) -> None:
    await StorageProducer(storage).send(echo)
    consumer = StorageConsumer(storage)
    got = await receive(consumer)

    await consumer.ack(got)

    assert await storage.counts() == QueueCounts()
    with pytest.raises(LeaseLost, match=r"^lease on task \w+ was lost; ack refused$"):
        await consumer.ack(got)
    await consumer.close()


@pytest.mark.parametrize(
    ("count_attempt", "next_attempt"),
    [pytest.param(True, 2, id="counted"), pytest.param(False, 1, id="not-counted")],
)
async def test_nack_requeues_the_task(
    storage: StorageBackend, echo: TaskFunc, count_attempt: bool, next_attempt: int
) -> None:
    await StorageProducer(storage).send(echo)
    consumer = StorageConsumer(storage)

    await consumer.nack(await receive(consumer), count_attempt=count_attempt)

    assert await storage.counts() == QueueCounts(ready=1)
    assert (await receive(consumer)).attempt == next_attempt
    await consumer.close()


async def test_nack_with_delay_hides_the_task_until_due(
    fake_storage: StorageBackend, clock: FakeClock, echo: TaskFunc
) -> None:
    await StorageProducer(fake_storage).send(echo)
    consumer = StorageConsumer(fake_storage, clock=clock)

    await consumer.nack(await receive(consumer), delay_s=5)

    assert await fake_storage.counts() == QueueCounts(delayed=1)
    clock.advance(6)
    assert (await receive(consumer)).attempt == 2
    await consumer.close()


async def test_nack_without_requeue_dead_letters_with_reason(
    storage: StorageBackend, echo: TaskFunc
) -> None:
    sent = await StorageProducer(storage).send(echo)
    consumer = StorageConsumer(storage)

    await consumer.nack(await receive(consumer), requeue=False, reason="bad input")

    assert await storage.counts() == QueueCounts(dead=1)
    [dead] = await storage.dead_tasks()
    assert (dead.task_id, dead.reason, dead.attempts) == (sent.id, "bad input", 1)
    await consumer.close()


@pytest.mark.parametrize(
    ("operation", "answer"),
    [
        pytest.param("ack", lambda c, t: c.ack(t), id="ack"),
        pytest.param("nack", lambda c, t: c.nack(t), id="nack"),
        pytest.param("nack", lambda c, t: c.nack(t, requeue=False), id="nack-dead"),
    ],
)
async def test_consumer_that_lost_its_lease_gets_lease_lost(
    fake_storage: StorageBackend,
    clock: FakeClock,
    echo: TaskFunc,
    operation: str,
    answer: Callable[[StorageConsumer, Task], Any],
) -> None:
    await StorageProducer(fake_storage).send(echo)
    late, current = (StorageConsumer(fake_storage, clock=clock) for _ in range(2))
    stale = await receive(late)
    clock.advance(7 + 6)  # past the lease: the timeout plus its grace
    fresh = await receive(current)
    assert fresh.attempt == 2

    with pytest.raises(LeaseLost, match=rf"^lease on task {stale.id} was lost; {operation} "):
        await answer(late, stale)

    assert await fake_storage.counts() == QueueCounts(leased=1)
    await current.ack(fresh)
    assert await fake_storage.counts() == QueueCounts()
    await late.close()


async def test_renew_reports_and_forgets_lost_leases(
    fake_storage: StorageBackend, clock: FakeClock, echo: TaskFunc
) -> None:
    await StorageProducer(fake_storage).send_batch([(echo, (), {}), (echo, (), {})])
    late = StorageConsumer(fake_storage, clock=clock)
    first, second = await late.receive_batch(2, timeout=10)  # both leased for 12 s
    clock.advance(6)
    assert await late.renew([first, second]) == []
    clock.advance(8)
    assert await late.renew([second]) == []
    clock.advance(5)  # past the first task's renewed lease, inside the second's
    taken = await receive(StorageConsumer(fake_storage, clock=clock))

    assert await late.renew([first, second]) == [first]

    assert taken.id == first.id
    with pytest.raises(LeaseLost, match="ack refused"):
        await late.ack(first)
    await late.ack(second)


# Undecodable payloads --------------------------------------------------------------------


async def test_undecodable_payload_is_dead_lettered_and_the_next_task_received(
    storage: StorageBackend, echo: TaskFunc
) -> None:
    garbage = NewTask(task_id=uuid.uuid4().hex, payload=b"\xffnot json", max_attempts=3)
    await storage.enqueue([garbage])
    good = await StorageProducer(storage).send(echo)
    rejected: list[Rejected] = []

    async def on_reject(rejection: Rejected) -> None:
        rejected.append(rejection)

    consumer = StorageConsumer(storage)
    consumer.on_reject = on_reject

    got = await receive(consumer)

    assert got.id == good.id
    assert [(r.task_id, r.attempt, r.max_attempts) for r in rejected] == [(garbage.task_id, 1, 3)]
    assert rejected[0].reason.startswith("undecodable payload: ")
    [dead] = await storage.dead_tasks()
    assert dead.task_id == garbage.task_id
    assert dead.payload == garbage.payload
    assert dead.reason == rejected[0].reason
    assert await storage.counts() == QueueCounts(leased=1, dead=1)
    await consumer.close()


# Cancellation and closing ----------------------------------------------------------------


async def test_cancelled_receive_gives_back_what_it_claimed(
    storage: StorageBackend, echo: TaskFunc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PF-16: a claim that lands after its receive was cancelled must not strand the task."""
    sent = await StorageProducer(storage).send(echo)
    claimed = asyncio.Event()
    real_claim = storage.claim

    async def signalling_claim(limit: int, *, queue: str = "default") -> list[Claim]:
        claims = await real_claim(limit, queue=queue)
        claimed.set()
        return claims

    monkeypatch.setattr(storage, "claim", signalling_claim)
    consumer = StorageConsumer(storage)
    with contextlib.closing(storage.watch()) as watcher:
        receiving = asyncio.ensure_future(consumer.receive(timeout=10))
        await asyncio.sleep(0)  # the receive is now inside its claim

        receiving.cancel()

        with pytest.raises(asyncio.CancelledError):
            await receiving
        await asyncio.wait_for(claimed.wait(), timeout=10)  # the task was leased after all
        await wait_for_counts(storage, watcher, QueueCounts(ready=1))
    monkeypatch.undo()
    [claim] = await storage.claim(1)
    assert (claim.task_id, claim.attempt) == (sent.id, 1)
    await consumer.close()


class BlockingSerializer(JSONSerializer):
    """Decodes only once the test lets it, so a receive can be cancelled mid-decode."""

    def __init__(self) -> None:
        super().__init__()
        self.decoding = threading.Event()
        self.proceed = threading.Event()

    def deserialize(self, data: bytes) -> Task:
        self.decoding.set()
        self.proceed.wait(10)
        return super().deserialize(data)


async def test_receive_cancelled_while_decoding_gives_the_task_back(
    storage: StorageBackend, echo: TaskFunc
) -> None:
    sent = await StorageProducer(storage).send(echo, BIG_ARG)
    serializer = BlockingSerializer()
    consumer = StorageConsumer(storage, serializer=serializer)
    with contextlib.closing(storage.watch()) as watcher:
        receiving = asyncio.ensure_future(consumer.receive(timeout=10))
        assert await asyncio.to_thread(serializer.decoding.wait, 10)

        receiving.cancel()
        serializer.proceed.set()

        with pytest.raises(asyncio.CancelledError):
            await receiving
        await wait_for_counts(storage, watcher, QueueCounts(ready=1))
    [claim] = await storage.claim(1)
    assert (claim.task_id, claim.attempt) == (sent.id, 1)
    await consumer.close()


async def test_close_gives_back_unanswered_tasks_without_using_an_attempt(
    storage: StorageBackend, echo: TaskFunc
) -> None:
    await StorageProducer(storage).send_batch([(echo, (i,), {}) for i in range(3)])
    consumer = StorageConsumer(storage)
    answered, unanswered = await consumer.receive_batch(2, timeout=10)
    await consumer.ack(answered)

    await consumer.close()

    assert await storage.counts() == QueueCounts(ready=2)
    claims = await storage.claim(10)
    assert unanswered.id in {c.task_id for c in claims}
    assert {c.attempt for c in claims} == {1}
    with pytest.raises(BrokerError, match=r"^consumer is closed$"):
        await consumer.receive(timeout=0)
    await consumer.close()  # idempotent


async def test_async_context_managers_close_producer_and_consumer(
    storage: StorageBackend, echo: TaskFunc
) -> None:
    async with StorageProducer(storage) as producer, StorageConsumer(storage) as consumer:
        sent = await producer.send(echo)
        got = await receive(consumer)

    assert got.id == sent.id
    assert await storage.counts() == QueueCounts(ready=1)
    with pytest.raises(BrokerError, match=r"^producer is closed$"):
        await producer.send(echo)
    with pytest.raises(BrokerError, match=r"^consumer is closed$"):
        await consumer.receive(timeout=0)


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
async def test_consumer_keeps_two_deliveries_of_one_task_apart(kind: str, tmp_path: Path) -> None:
    """A worker whose lease ran out while it still ran a task may receive that task again; a
    late ack of the first delivery must not end the second one."""
    clock = FakeClock()
    storage = open_test_storage(kind, tmp_path, clock=clock)
    await StorageProducer(storage).send("test.some_task")
    consumer = StorageConsumer(storage, clock=clock)

    first = await consumer.receive(timeout=0)
    assert first is not None
    clock.advance(storage.default_lease_s + 1)
    second = await consumer.receive(timeout=0)
    assert second is not None
    assert (first.id, first.attempt, second.attempt) == (second.id, 1, 2)

    with pytest.raises(LeaseLost):
        await consumer.ack(first)
    assert (await storage.counts()).leased == 1
    await consumer.ack(second)
    counts = await storage.counts()
    assert (counts.ready, counts.leased, counts.dead) == (0, 0, 0)
    await consumer.close()
    await storage.close()


async def test_send_refuses_arguments_that_do_not_fit_the_signature(
    storage: StorageBackend,
) -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    name = f"tests.broker.add.{uuid.uuid4().hex}"
    register_task(name=name)(add)
    producer = StorageProducer(storage)
    try:
        with pytest.raises(InvalidArguments, match=r"^task '.*': missing a required argument"):
            await producer.send(add, 1)
        with pytest.raises(TypeError, match=r"^call 1 of the batch: task '.*': got an unexpec"):
            await producer.send_batch([(add, (1, 2), {}), (add, (1, 2), {"c": 3})])
        assert await storage.counts() == QueueCounts()
    finally:
        registry.remove(name)
