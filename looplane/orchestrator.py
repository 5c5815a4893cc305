"""The orchestrator: runs leased tasks under a concurrency limit and records every attempt.

Each task goes through named steps: receive, look up, execute, record, then ack or nack.
It leases only as many tasks as it has free slots, because a task waiting in a local buffer
could outlive its lease (https://github.com/Bogdanp/dramatiq_sqs/pull/53). While tasks run,
an independent renewal loop extends their leases, so a long task is never handed out twice
while its worker lives, and a task whose lease was lost anyway is cancelled.

Interruptions the orchestrator causes itself (a stop) give the task back without using up an
attempt (https://github.com/python-arq/arq/issues/267); a crash still counts, so a task that
kills its worker cannot loop forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from looplane import _codec
from looplane._clock import SYSTEM_CLOCK, Clock
from looplane.errors import (
    BrokerError,
    Cancel,
    ConfigError,
    LeaseLost,
    LooplaneError,
    Retry,
    SerializationError,
    TaskNotFound,
    TaskTimeout,
)
from looplane.log import log_task_line, one_line, task_log
from looplane.result.base import ResultBackend, TaskResult
from looplane.task import Task, TaskFunction, TaskRegistry, _enter_task, registry

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from looplane.broker.consumer import Consumer, Rejected

__all__ = ["DEFAULT_GRACE_S", "Orchestrator"]

logger = logging.getLogger(__name__)

DEFAULT_GRACE_S = 30.0

# After the grace period, interrupted tasks get this long to run their cleanup before stop()
# gives up on them and leaves them leased (their lease then runs out and they run again).
_CANCEL_DEADLINE_S = 5.0
# How long recording an interrupted task's requeue may take during shutdown.
_REQUEUE_DEADLINE_S = 5.0
_MAX_RENEW_INTERVAL_S = 1.0
_RECEIVE_WAIT_S = 1.0

# The line each attempt ends with, by outcome.
_SUCCESS_LINE = "attempt finished outcome=success duration_ms=%.1f"
_RETRY_LINE = "attempt failed, retry scheduled outcome=retry duration_ms=%.1f delay_s=%.2f error=%s"
_FAILED_LINE = "attempt failed, no retries left outcome=failed duration_ms=%.1f error=%s"

Interruption = Literal["shutdown", "lease_lost"]


@dataclass(slots=True)
class _Running:
    task: Task
    runner: asyncio.Task[None]
    interrupted: Interruption | None = None
    recording: bool = False
    thread: Future[Any] | None = None


@dataclass(slots=True)
class _Attempt:
    task: Task
    started_at: datetime
    started_mono: float

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        # Built only for a line that is logged: most attempts log nothing above DEBUG.
        return task_log(logger, self.task)


class Orchestrator:
    """Receives tasks from a consumer and runs them, at most `max_concurrent_tasks` at once.

    ``async def`` task functions run on the event loop; plain functions run in a thread pool
    of `max_concurrent_tasks` threads. Every attempt's outcome goes to `result_backend`.

    Note:
        A plain-function task that times out or is interrupted keeps running in its thread
        (Python cannot kill a thread); the orchestrator stops waiting for it, records the
        outcome and drops whatever the thread returns later.
    """

    def __init__(
        self,
        consumer: Consumer,
        result_backend: ResultBackend | None = None,
        max_concurrent_tasks: int = 10,
        *,
        grace_s: float = DEFAULT_GRACE_S,
        task_registry: TaskRegistry = registry,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_concurrent_tasks < 1:
            raise ConfigError(f"max_concurrent_tasks must be >= 1, got {max_concurrent_tasks}")
        self.consumer = consumer
        self.result_backend = result_backend
        self.max_concurrent_tasks = max_concurrent_tasks
        self.grace_s = grace_s
        self.registry = task_registry
        self.clock = clock
        self._running: dict[tuple[str, int], _Running] = {}
        self._slot_free = asyncio.Event()
        self._fetcher: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._force = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._shared_writer = False
        self._recording = 0
        self._abandoned_threads = 0
        self._stopped = False
        self.finished = 0

    @property
    def active_tasks(self) -> int:
        """How many task functions are running now."""
        return len(self._running) - self._recording

    @property
    def capacity(self) -> int:
        """How many more tasks could start now.

        A task whose function has returned no longer takes a slot while its result is
        recorded, so the next task's claim shares a commit with that result. At most
        `max_concurrent_tasks` more may be recording at once.
        """
        room = self.max_concurrent_tasks - self.active_tasks - self._abandoned_threads
        backlog = 2 * self.max_concurrent_tasks - len(self._running)
        return min(room, backlog)

    @property
    def is_running(self) -> bool:
        """True between `start` and the end of `stop`."""
        return self._fetcher is not None and self._stopping is None

    async def start(self) -> None:
        """Start receiving and running tasks in the background; returns at once."""
        if self._stopped:
            raise BrokerError("this orchestrator was stopped; create a new one to run again")
        if self._fetcher is not None:
            return
        self.consumer.on_reject = self._record_reject
        storage = getattr(self.consumer, "storage", None)
        channel = getattr(storage, "write_channel", None)
        self._shared_writer = (
            channel is not None
            and self.result_backend is not None
            and (self.result_backend.write_channel is channel)
        )
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_concurrent_tasks, thread_name_prefix="looplane-task"
        )
        self._fetcher = asyncio.create_task(self._fetch_loop(), name="looplane-fetch")
        self._renewer = asyncio.create_task(self._renew_loop(), name="looplane-renew")
        logger.info(
            "orchestrator started max_concurrent_tasks=%d grace_s=%.1f",
            self.max_concurrent_tasks,
            self.grace_s,
        )

    async def stop(self, wait: bool = True) -> None:
        """Stop receiving, then finish or give back the running tasks.

        With ``wait=True`` running tasks get `grace_s` seconds to finish; those still running
        then are cancelled and returned to the queue without using up an attempt. With
        ``wait=False`` they are cancelled at once. A task that ignores cancellation for a
        further 5 s is left leased (its lease runs out and it runs again) and logged.
        Calling `stop` again while a stop is under way joins it; ``wait=False`` then cuts the
        grace period short. Cancelling `stop` does not cancel the shutdown.
        """
        if self._fetcher is None:
            return
        if not wait:
            self._force.set()
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._shutdown(), name="looplane-stop")
        await asyncio.shield(self._stopping)

    # Receiving ----------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        failures = 0
        while True:
            if self.capacity <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                tasks = await self.consumer.receive_batch(self.capacity, timeout=_RECEIVE_WAIT_S)
            except LooplaneError as exc:
                # One warning per outage, not one per retry; the retries back off to 5 s.
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                logger.log(level, "receive failed, retrying with backoff error=%s", exc)
                await self.clock.sleep(min(0.1 * 2**failures, 5.0))
                continue
            if failures:
                logger.warning("receive works again after %d failed tries", failures)
            failures = 0
            for task in tasks:
                self._spawn(task)

    def _spawn(self, task: Task) -> None:
        key = delivery_key(task)
        runner = asyncio.create_task(self._run(key, task), name=f"looplane-task-{task.id}")
        self._running[key] = _Running(task, runner)

    async def _run(self, key: tuple[str, int], task: Task) -> None:
        # The runner frees its own slot as it ends: a done callback would cost one more turn
        # of the loop per task. A runner cancelled before its first step never runs this
        # body, so `_interrupt` adds that callback to the runners it cancels.
        try:
            await self._process(task)
        except Exception:  # pragma: no cover - _process records every failure of the task
            logger.exception("task runner crashed task_id=%s", key[0])
        finally:
            self._forget(key)

    def _forget(self, key: tuple[str, int], _runner: object = None) -> None:
        running = self._running.pop(key, None)
        if running is None:
            return
        if running.recording:
            self._recording -= 1
        self.finished += 1
        self._slot_free.set()

    # Running one task ---------------------------------------------------------------------

    async def _process(self, task: Task) -> None:
        try:
            entry = self.registry.get(task.name)
        except TaskNotFound:
            await self._reject_unknown(task)
            return
        if task.attempt > 1 and await self._already_succeeded(task):
            return
        attempt = _Attempt(
            task, datetime.fromtimestamp(self.clock.time(), UTC), self.clock.monotonic()
        )
        try:
            value = await self._execute(entry, task)
        except asyncio.CancelledError as exc:
            if _cancel_requested():
                await self._interrupted(task)
                raise
            # The task's own code raised CancelledError; nobody cancelled the runner.
            self._recording_starts(task)
            await self._finish_failure(attempt, exc)
        except BaseException as exc:  # noqa: BLE001 - task code may raise anything, even SystemExit
            self._recording_starts(task)
            await self._finish_failure(attempt, exc)
        else:
            self._recording_starts(task)
            await self._finish_success(attempt, value)

    async def _already_succeeded(self, task: Task) -> bool:
        # A worker that died between storing a success and acking it leaves the task to be
        # delivered again: it is acked now instead of run twice, so it has one success.
        if task.attempt <= 1 or self.result_backend is None:
            return False
        previous = await self.result_backend.get(task.id)
        if previous is None or not previous.success or not previous.is_final:
            return False
        with contextlib.suppress(LeaseLost):
            await self.consumer.ack(task)
        task_log(logger, task).warning(
            "already succeeded on attempt %d; acked without running it again outcome=duplicate",
            previous.attempt,
            extra={"outcome": "duplicate"},
        )
        return True

    def _execute(self, entry: TaskFunction, task: Task) -> Awaitable[Any]:
        # A plain function that hands back the awaitable, not a coroutine around it: one
        # frame less per task. Whatever the call raises, the caller's await catches the same.
        _enter_task(task)
        if not entry.is_async:
            return self._execute_in_thread(entry, task)
        call: Awaitable[Any] = entry.func(*task.args, **task.kwargs)
        if task.timeout is None:
            return call
        return self._with_timeout(task, call)

    async def _with_timeout(self, task: Task, call: Awaitable[Any]) -> Any:
        assert task.timeout is not None
        timer = asyncio.timeout(task.timeout)
        started = self.clock.monotonic()
        try:
            async with timer:
                value = await call
        except TimeoutError:
            if not timer.expired():
                raise
            raise _timed_out(task, task.timeout) from None
        # A task that swallowed the cancellation, or blocked the loop so the timer could not
        # fire, still overran: it is recorded as timed out all the same.
        elapsed = self.clock.monotonic() - started
        if timer.expired() or elapsed > task.timeout:
            if inspect.iscoroutine(value):
                value.close()
            raise _timed_out(task, elapsed)
        return value

    async def _execute_in_thread(self, entry: TaskFunction, task: Task) -> Any:
        # The timeout starts when a thread picks the task up, not while it waits for one;
        # a thread abandoned on timeout or stop still counts against capacity until it ends,
        # so the orchestrator never leases tasks it has no thread for.
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        context = contextvars.copy_context()

        def run() -> Any:
            loop.call_soon_threadsafe(_resolve, started)
            return context.run(entry.func, *task.args, **task.kwargs)

        thread = self._executor.submit(run)
        running = self._running.get(delivery_key(task))
        if running is not None:
            running.thread = thread
        try:
            await started
            if task.timeout is None:
                return await asyncio.wrap_future(thread)
            return await self._with_timeout(task, asyncio.wrap_future(thread))
        finally:
            if not thread.done() and not thread.cancel():
                self._abandon_thread(thread, loop)

    def _abandon_thread(self, thread: Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._abandoned_threads += 1

        def finished(_: Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._thread_finished)

        thread.add_done_callback(finished)

    def _thread_finished(self) -> None:
        self._abandoned_threads -= 1
        self._slot_free.set()

    def _recording_starts(self, task: Task) -> None:
        # Once the attempt is over, recording and acking run to the end: the orchestrator
        # never interrupts a task in this step, because a half-recorded outcome is what
        # leaves tasks stuck or lost.
        running = self._running.get(delivery_key(task))
        if running is not None:
            running.recording = True
            self._recording += 1
            self._slot_free.set()

    async def _finish_success(self, attempt: _Attempt, value: Any) -> None:
        task = attempt.task
        if inspect.iscoroutine(value):
            value.close()
            await self._finish_failure(
                attempt,
                SerializationError(
                    "task returned a coroutine object (a missing await?)", type_name="coroutine"
                ),
                retryable=False,
            )
            return
        result = self._result(attempt, success=True, value=value)
        try:
            result.to_bytes()
        except SerializationError as exc:
            await self._finish_failure(attempt, exc, retryable=False)
            return
        await self._answer(task, attempt, result, self.consumer.ack(task), outcome="success")

    async def _finish_failure(
        self, attempt: _Attempt, exc: BaseException, *, retryable: bool = True
    ) -> None:
        task = attempt.task
        retryable = retryable and not isinstance(exc, Cancel)
        will_retry = retryable and task.attempt < task.max_attempts
        result = self._result(attempt, success=False, exc=exc, will_retry=will_retry)
        error = _describe(exc)
        if will_retry:
            delay_s = task.backoff.delay_s(task.attempt)
            if isinstance(exc, Retry) and exc.delay_s is not None:
                delay_s = exc.delay_s
            await self._answer(
                task,
                attempt,
                result,
                self.consumer.nack(task, delay_s=delay_s),
                outcome="retry",
                delay_s=delay_s,
                error=error,
            )
            return
        reason = f"failed on attempt {task.attempt} of {task.max_attempts}: {error}"
        await self._answer(
            task,
            attempt,
            result,
            self.consumer.nack(task, requeue=False, reason=reason),
            outcome="failed",
            error=error,
        )

    async def _answer(
        self,
        task: Task,
        attempt: _Attempt,
        result: TaskResult,
        call: Awaitable[None],
        *,
        outcome: str,
        delay_s: float | None = None,
        error: str | None = None,
    ) -> None:
        duration_ms = (self.clock.monotonic() - attempt.started_mono) * 1000
        try:
            await self._store_then(result, call)
        except LeaseLost:
            attempt.log.warning(
                "attempt finished but its lease was lost; another worker may "
                "run it again outcome=%s",
                outcome,
                extra={"outcome": outcome},
            )
            return
        args: tuple[Any, ...]
        if outcome == "success":
            level, msg, args = logging.INFO, _SUCCESS_LINE, (duration_ms,)
        elif outcome == "retry":
            level, msg = logging.WARNING, _RETRY_LINE
            args = (duration_ms, delay_s, one_line(error or ""))
        else:
            level, msg, args = logging.ERROR, _FAILED_LINE, (duration_ms, one_line(error or ""))
        log_task_line(
            logger, level, task, msg, *args, outcome=outcome, duration_ms=round(duration_ms, 1)
        )

    def _result(
        self,
        attempt: _Attempt,
        *,
        success: bool,
        value: Any = None,
        exc: BaseException | None = None,
        will_retry: bool = False,
    ) -> TaskResult:
        task = attempt.task
        finished = self.clock.time()
        return TaskResult(
            task_id=task.id,
            func_name=task.name,
            success=success,
            value=value,
            error=_describe(exc) if exc is not None else None,
            error_type=_codec.type_name(exc) if exc is not None else None,
            traceback=_format_traceback(exc) if exc is not None else None,
            attempt=task.attempt,
            max_retries=task.max_retries,
            will_retry=will_retry,
            duration=self.clock.monotonic() - attempt.started_mono,
            fetched_at=task.fetched_at,
            started_at=attempt.started_at,
            finished_at=datetime.fromtimestamp(finished, UTC),
        )

    async def _store_then(self, result: TaskResult, call: Awaitable[None]) -> None:
        # The result must be stored before the task is answered, or a crash in between
        # would leave a finished task with no result. When both commit through one ordered
        # writer, submitting them together keeps that order and saves a commit per task.
        # Limitation: they are still two write operations, usually but not always in one
        # transaction (and never one on Redis), so a crash between them delivers the task
        # again (`_already_succeeded` then acks it without a second run); and their cost
        # caps LMDB at about 5,200 no-op tasks/s on 2 cores.
        # Lifted by: one storage operation that acks and stores the result together when
        # storage and results share an environment.
        if self._shared_writer:
            stored, answered = await asyncio.gather(
                self._store(result), call, return_exceptions=True
            )
            for outcome in (stored, answered):
                if isinstance(outcome, BaseException):
                    raise outcome
            return
        try:
            if self.result_backend is not None:
                await self.result_backend.store(result)
        except BaseException:
            # The answer must not go out without its result; drop it unsent, or Python
            # warns that the coroutine was never awaited.
            if inspect.iscoroutine(call):
                call.close()
            raise
        await call

    async def _store(self, result: TaskResult) -> None:
        if self.result_backend is not None:
            await self.result_backend.store(result)

    async def _interrupted(self, task: Task) -> None:
        running = self._running.get(delivery_key(task))
        reason = running.interrupted if running else None
        log = task_log(logger, task)
        if reason == "lease_lost":
            log.warning(
                "cancelled: lease lost, another worker may run it outcome=lease_lost",
                extra={"outcome": "lease_lost"},
            )
            return
        if reason != "shutdown":
            return
        if running is not None and not await self._thread_ended(running):
            # Requeueing now would let another worker run it while this thread still does;
            # the consumer must not give it back on close either.
            self.consumer.abandon(task)
            log.warning(
                "interrupted by shutdown, but its thread still runs; left leased, it "
                "runs again after its lease outcome=interrupted",
                extra={"outcome": "interrupted"},
            )
            return
        with contextlib.suppress(LeaseLost, TimeoutError):
            async with asyncio.timeout(_REQUEUE_DEADLINE_S):
                await asyncio.shield(self.consumer.nack(task, count_attempt=False))
        log.warning(
            "interrupted by shutdown, requeued outcome=interrupted",
            extra={"outcome": "interrupted"},
        )

    async def _thread_ended(self, running: _Running) -> bool:
        # A thread cannot be cancelled, and the process cannot exit before it ends anyway, so
        # a graceful stop waits for it; a forced stop does not.
        if running.thread is None or running.thread.done():
            return True
        task_log(logger, running.task).warning(
            "waiting for its thread to end before requeueing (stop again to leave it leased)"
        )
        forced = asyncio.ensure_future(self._force.wait())
        await asyncio.wait(
            [asyncio.wrap_future(running.thread), forced], return_when=asyncio.FIRST_COMPLETED
        )
        forced.cancel()
        return running.thread.done()

    async def _reject_unknown(self, task: Task) -> None:
        reason = f"unknown task {task.name!r}: no loaded module registered it"
        log = task_log(logger, task)
        log.error("set aside: %s", reason, extra={"outcome": "dead"})
        await self._store(
            TaskResult(
                task_id=task.id,
                func_name=task.name,
                success=False,
                error=reason,
                error_type="looplane.errors.TaskNotFound",
                attempt=task.attempt,
                max_retries=task.max_retries,
                fetched_at=task.fetched_at,
                finished_at=datetime.fromtimestamp(self.clock.time(), UTC),
            )
        )
        with contextlib.suppress(LeaseLost):
            await self.consumer.nack(task, requeue=False, reason=reason)

    async def _record_reject(self, rejected: Rejected) -> None:
        try:
            await self._store(
                TaskResult(
                    task_id=rejected.task_id,
                    func_name=rejected.name or "<undecodable>",
                    success=False,
                    error=rejected.reason,
                    error_type=None if rejected.name else "looplane.errors.SerializationError",
                    attempt=rejected.attempt,
                    max_retries=rejected.max_attempts - 1,
                    finished_at=datetime.fromtimestamp(self.clock.time(), UTC),
                )
            )
        except LooplaneError:
            logger.exception("could not record rejected task task_id=%s", rejected.task_id)

    # Leases -------------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        while True:
            interval = self.consumer.renew_interval_s
            if interval is None:
                return
            await self.clock.sleep(min(interval, _MAX_RENEW_INTERVAL_S))
            running = [r.task for r in self._running.values()]
            if not running:
                continue
            try:
                lost = await self.consumer.renew(running)
            except LooplaneError:
                logger.warning("lease renewal failed; retrying", exc_info=True)
                continue
            for task in lost:
                self._interrupt(delivery_key(task), "lease_lost")

    def _interrupt(self, key: tuple[str, int], reason: Interruption) -> None:
        running = self._running.get(key)
        if running is None or running.recording:
            return
        running.interrupted = reason
        running.runner.cancel()
        running.runner.add_done_callback(functools.partial(self._forget, key))

    # Stopping -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        assert self._fetcher is not None
        self._fetcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._fetcher
        await self._drain()
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._stopped = True
        logger.info("orchestrator stopped finished=%d", self.finished)

    async def _drain(self) -> None:
        pending = {r.runner for r in self._running.values()}
        if pending and not self._force.is_set():
            logger.info("waiting for %d running tasks grace_s=%.1f", len(pending), self.grace_s)
            await self._wait_unless_forced(pending, self.grace_s)
        left = [r for r in self._running.values() if not r.runner.done()]
        if not left:
            return
        logger.warning("interrupting %d running tasks", len(left))
        for running in left:
            self._interrupt(delivery_key(running.task), "shutdown")
        # Runners of plain-def tasks wait for their thread (or a forced stop) on their own.
        threaded = {r.runner for r in left if r.thread is not None and not r.thread.done()}
        stuck: set[asyncio.Task[None]] = set()
        if others := {r.runner for r in left} - threaded:
            _, stuck = await asyncio.wait(others, timeout=_CANCEL_DEADLINE_S)
        if threaded:
            await asyncio.wait(threaded)
        for running in left:
            if running.runner in stuck:
                self.consumer.abandon(running.task)
                task_log(logger, running.task).warning(
                    "ignored cancellation; left leased, it will run again after its lease"
                )

    async def _wait_unless_forced(self, runners: set[asyncio.Task[None]], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        forced = asyncio.ensure_future(self._force.wait())
        try:
            while runners and not forced.done() and loop.time() < deadline:
                await asyncio.wait(
                    [*runners, forced],
                    timeout=deadline - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                runners = {r for r in runners if not r.done()}
        finally:
            forced.cancel()


def delivery_key(task: Task) -> tuple[str, int]:
    """The key of one delivery of a task, its id and attempt.

    A worker can hold a second delivery of a task whose first lease ran out while it still
    ran, so the task id alone does not name a delivery.
    """
    return task.id, task.attempt


def _cancel_requested() -> bool:
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _timed_out(task: Task, elapsed_s: float) -> TaskTimeout:
    assert task.timeout is not None
    if elapsed_s > task.timeout * 1.01 + 0.05:
        message = f"attempt ran {elapsed_s:.2f}s, past its timeout of {task.timeout:g}s"
    else:
        message = f"attempt timed out after {task.timeout:g}s"
    return TaskTimeout(message, task_id=task.id, timeout_s=task.timeout)


def _describe(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break recording
        message = "<exception message could not be read>"
    return f"{_codec.type_name(exc)}: {message}" if message else _codec.type_name(exc)


def _format_traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001 - a broken exception must not break recording
        return _describe(exc)
