"""Tests for task functions, the registry, `Backoff`, `Task` and the task context."""

from __future__ import annotations

import functools
import math
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looplane.errors import ConfigError, InvalidArguments, TaskNotFound
from looplane.task import (
    MAX_NAME_LENGTH,
    Backoff,
    BackoffKind,
    Task,
    TaskContext,
    current_task,
    new_task_id,
    new_task_ids,
    register_task,
    registry,
    set_current_task,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture(autouse=True)
def _forget_new_task_functions() -> Iterator[None]:
    """Remove every task function a test registers, so none leaks into other tests."""
    before = {entry.name for entry in registry}
    try:
        yield
    finally:
        for entry in list(registry):
            if entry.name not in before:
                registry.remove(entry.name)


def _load_from_other_module(source: str, module: str) -> Any:
    """Define the single function in `source` as if it came from `module` (another file)."""
    namespace: dict[str, Any] = {"__name__": module}
    exec(compile(source, f"<{module}>", "exec"), namespace)
    return next(value for key, value in namespace.items() if not key.startswith("__"))


async def test_register_task_bare_returns_async_function_unchanged() -> None:
    async def lp_test_bare_async(x: int) -> int:
        return x + 1

    registered = register_task(lp_test_bare_async)
    entry = registry.get("lp_test_bare_async")

    assert registered is lp_test_bare_async
    assert await registered(1) == 2
    assert entry.func is lp_test_bare_async
    assert entry.is_async
    assert (entry.retries, entry.timeout, entry.backoff) == (None, None, None)


def test_register_task_bare_returns_plain_function_unchanged() -> None:
    def lp_test_bare_sync(x: int) -> int:
        return x * 2

    registered = register_task(lp_test_bare_sync)
    entry = registry.get("lp_test_bare_sync")

    assert registered is lp_test_bare_sync
    assert registered(4) == 8
    assert entry.func is lp_test_bare_sync
    assert not entry.is_async


async def test_register_task_with_options_keeps_async_function_and_options() -> None:
    @register_task(name="lp_test.options_async", retries=5, timeout=2.5, backoff="fixed")
    async def send_email(to: str) -> str:
        return f"sent to {to}"

    entry = registry.get("lp_test.options_async")

    assert await send_email("a@example.com") == "sent to a@example.com"
    assert entry.func is send_email
    assert entry.is_async
    assert (entry.retries, entry.timeout) == (5, 2.5)
    assert entry.backoff == Backoff(kind=BackoffKind.FIXED)


def test_register_task_with_options_keeps_plain_function_and_options() -> None:
    policy = Backoff(kind=BackoffKind.NONE)

    @register_task(name="lp_test.options_sync", retries=0, timeout=1, backoff=policy)
    def resize(width: int) -> int:
        return width // 2

    entry = registry.get("lp_test.options_sync")

    assert resize(10) == 5
    assert entry.func is resize
    assert not entry.is_async
    assert (entry.retries, entry.timeout, entry.backoff) == (0, 1, policy)


def test_register_task_without_name_uses_function_name() -> None:
    @register_task(retries=1)
    def lp_test_default_name() -> None:
        return None

    assert registry.lookup(lp_test_default_name).name == "lp_test_default_name"
    assert "lp_test_default_name" in registry


def test_register_task_same_name_from_other_module_names_both() -> None:
    @register_task(name="lp_test.clash")
    def first() -> None:
        return None

    second = _load_from_other_module("def second():\n    return None\n", "lp_other_module")
    message = (
        rf"^task name 'lp_test\.clash' is already registered by "
        rf"{re.escape(__name__)}\.{re.escape(first.__qualname__)}; cannot register "
        r"lp_other_module\.second under it \(pass name=\.\.\.\)$"
    )

    with pytest.raises(ConfigError, match=message):
        register_task(name="lp_test.clash")(second)
    assert registry.get("lp_test.clash").func is first


def test_register_task_same_function_twice_replaces_registration() -> None:
    def lp_test_twice() -> None:
        return None

    register_task(lp_test_twice)
    register_task(retries=7)(lp_test_twice)

    assert registry.get("lp_test_twice").retries == 7
    assert registry.lookup(lp_test_twice).retries == 7


def test_register_task_reloaded_function_replaces_registration() -> None:
    """A module reloaded (or run as __main__ and imported) defines a new function object
    with the same file and qualname; it must replace the old one, not clash."""

    def define() -> Callable[[], None]:
        def lp_test_reloaded() -> None:
            return None

        return lp_test_reloaded

    old, new = define(), define()
    register_task(old)
    register_task(new)

    assert registry.get("lp_test_reloaded").func is new
    assert registry.lookup(new).func is new
    # Code that kept the old function object (a script run as __main__ that is also imported
    # under its module name) still sends under the same name.
    assert registry.lookup(old).func is new


def test_registry_remove_one_alias_keeps_function_lookup() -> None:
    def lp_test_aliased() -> None:
        return None

    register_task(name="lp_test.alias_a")(lp_test_aliased)
    register_task(name="lp_test.alias_b")(lp_test_aliased)
    registry.remove("lp_test.alias_a")

    assert registry.lookup(lp_test_aliased).name == "lp_test.alias_b"
    assert "lp_test.alias_a" not in registry


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"retries": -1}, r"^retries must be an int >= 0, got -1$", id="retries-negative"
        ),
        pytest.param(
            {"retries": 1.5}, r"^retries must be an int >= 0, got 1\.5$", id="retries-float"
        ),
        pytest.param({"retries": "3"}, r"^retries must be an int >= 0, got '3'$", id="retries-str"),
        pytest.param(
            {"retries": True}, r"^retries must be an int >= 0, got True$", id="retries-bool"
        ),
        pytest.param(
            {"timeout": 0}, r"^timeout must be a number of seconds > 0, got 0$", id="timeout-zero"
        ),
        pytest.param(
            {"timeout": -1.0},
            r"^timeout must be a number of seconds > 0, got -1\.0$",
            id="timeout-negative",
        ),
        pytest.param(
            {"timeout": math.nan},
            r"^timeout must be a number of seconds > 0, got nan$",
            id="timeout-nan",
        ),
        pytest.param(
            {"timeout": "5"},
            r"^timeout must be a number of seconds > 0, got '5'$",
            id="timeout-str",
        ),
        pytest.param(
            {"timeout": True},
            r"^timeout must be a number of seconds > 0, got True$",
            id="timeout-bool",
        ),
        pytest.param(
            {"backoff": "linear"},
            r"^backoff 'linear' is not one of: none, fixed, exponential$",
            id="backoff-unknown",
        ),
        pytest.param(
            {"name": ""}, r"^task name must be a non-empty string, got ''$", id="name-empty"
        ),
        pytest.param(
            {"name": 42}, r"^task name must be a non-empty string, got 42$", id="name-not-str"
        ),
        pytest.param(
            {"name": "x" * (MAX_NAME_LENGTH + 1)},
            rf"^task name is {MAX_NAME_LENGTH + 1} characters long \(at most {MAX_NAME_LENGTH}\)$",
            id="name-too-long",
        ),
    ],
)
def test_register_task_invalid_option_raises_config_error(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        register_task(**options)


def test_register_task_longest_allowed_name_is_accepted() -> None:
    name = "x" * MAX_NAME_LENGTH

    @register_task(name=name)
    def longest() -> None:
        return None

    assert registry.get(name).func is longest


def test_register_task_not_callable_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^@register_task needs a function, got str$"):
        register_task("send_email")  # type: ignore[call-overload]  # the mistake under test


def test_register_task_partial_needs_explicit_name() -> None:
    def add(a: int, b: int) -> int:
        return a + b

    add_one = functools.partial(add, 1)

    with pytest.raises(ConfigError, match=r"has no __name__; pass name=\.\.\. to @register_task$"):
        register_task(add_one)
    assert register_task(name="lp_test.partial")(add_one) is add_one
    assert registry.lookup(add_one).name == "lp_test.partial"


def test_registry_get_unknown_name_raises_task_not_found() -> None:
    with pytest.raises(TaskNotFound, match=r"^task 'lp_test\.missing' is not registered$"):
        registry.get("lp_test.missing")


def test_registry_remove_unknown_name_does_nothing() -> None:
    count = len(registry)

    registry.remove("lp_test.never_registered")

    assert len(registry) == count


def test_registry_iteration_is_sorted_with_name_module_and_options() -> None:
    @register_task(name="lp_test.iter_b", retries=2, timeout=9.0, backoff="none")
    async def second() -> None:
        return None

    @register_task(name="lp_test.iter_a")
    def first() -> None:
        return None

    names = [entry.name for entry in registry]
    ours = [entry for entry in registry if entry.name.startswith("lp_test.iter_")]

    assert names == sorted(names)
    assert [(e.name, e.module, e.func) for e in ours] == [
        ("lp_test.iter_a", __name__, first),
        ("lp_test.iter_b", __name__, second),
    ]
    assert (ours[0].retries, ours[0].timeout, ours[0].backoff) == (None, None, None)
    assert (ours[1].retries, ours[1].timeout) == (2, 9.0)
    assert ours[1].backoff == Backoff(kind=BackoffKind.NONE)


@pytest.mark.parametrize("attempt", [pytest.param(n, id=f"attempt-{n}") for n in (1, 2, 10, 5000)])
def test_backoff_none_is_zero(attempt: int) -> None:
    assert Backoff(kind=BackoffKind.NONE, base_s=5.0).delay_s(attempt) == 0.0


@pytest.mark.parametrize(
    ("base_s", "max_s", "expected"),
    [
        pytest.param(2.5, 300.0, 2.5, id="base"),
        pytest.param(10.0, 4.0, 4.0, id="capped-at-max"),
        pytest.param(0.0, 300.0, 0.0, id="zero"),
    ],
)
def test_backoff_fixed_is_constant(base_s: float, max_s: float, expected: float) -> None:
    policy = Backoff(kind=BackoffKind.FIXED, base_s=base_s, max_s=max_s, jitter=False)

    assert [policy.delay_s(n) for n in (1, 2, 3, 50)] == [expected] * 4


def test_backoff_exponential_doubles_until_max() -> None:
    policy = Backoff(kind=BackoffKind.EXPONENTIAL, base_s=1.0, max_s=20.0, jitter=False)

    assert [policy.delay_s(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]


def test_backoff_exponential_huge_attempt_is_capped_without_overflow() -> None:
    policy = Backoff(kind=BackoffKind.EXPONENTIAL, base_s=1.0, max_s=300.0, jitter=False)

    assert policy.delay_s(100_000) == 300.0


@settings(deadline=None)
@given(
    kind=st.sampled_from([BackoffKind.FIXED, BackoffKind.EXPONENTIAL]),
    base_s=st.floats(min_value=0.0, max_value=1e6),
    max_s=st.floats(min_value=0.0, max_value=1e6),
    attempt=st.integers(min_value=1, max_value=200),
)
def test_backoff_jitter_stays_within_upper_half(
    kind: BackoffKind, base_s: float, max_s: float, attempt: int
) -> None:
    exact = Backoff(kind=kind, base_s=base_s, max_s=max_s, jitter=False).delay_s(attempt)
    jittered = Backoff(kind=kind, base_s=base_s, max_s=max_s, jitter=True).delay_s(attempt)

    assert exact / 2 <= jittered <= exact


def test_backoff_string_kind_becomes_enum_member() -> None:
    policy = Backoff(kind="fixed", base_s=3.0, jitter=False)  # type: ignore[arg-type]  # under test

    assert policy.kind is BackoffKind.FIXED
    assert policy.delay_s(4) == 3.0
    assert policy.to_dict()["kind"] == "fixed"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"base_s": -1.0}, r"^backoff delays must be >= 0", id="negative-base"),
        pytest.param({"max_s": -0.5}, r"^backoff delays must be >= 0", id="negative-max"),
        pytest.param({"base_s": math.nan}, r"^backoff delays must be >= 0", id="nan-base"),
        pytest.param({"kind": "linear"}, r"^backoff 'linear' is not one of", id="unknown-kind"),
    ],
)
def test_backoff_invalid_values_raise_config_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Backoff(**options)


def test_backoff_parse_unknown_kind_lists_kinds() -> None:
    with pytest.raises(
        ConfigError, match=r"^backoff 'bogus' is not one of: none, fixed, exponential$"
    ):
        Backoff.parse("bogus")


@pytest.mark.parametrize("kind", [pytest.param(kind, id=kind.value) for kind in BackoffKind])
def test_backoff_parse_kind_name_uses_default_delays(kind: BackoffKind) -> None:
    assert Backoff.parse(kind.value) == Backoff(kind=kind)


def test_backoff_parse_returns_backoff_unchanged() -> None:
    policy = Backoff(kind=BackoffKind.FIXED, base_s=9.0)

    assert Backoff.parse(policy) is policy


def test_backoff_to_dict_from_dict_round_trips() -> None:
    policy = Backoff(kind=BackoffKind.FIXED, base_s=0.25, max_s=60.0, jitter=False)

    assert Backoff.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize(
    ("attempt", "is_retry"),
    [
        pytest.param(0, False, id="not-received"),
        pytest.param(1, False, id="first-attempt"),
        pytest.param(2, True, id="second-attempt"),
        pytest.param(9, True, id="ninth-attempt"),
    ],
)
def test_task_is_retry_from_second_attempt(attempt: int, *, is_retry: bool) -> None:
    assert Task(id="t1", name="lp_test.task", attempt=attempt).is_retry is is_retry


@pytest.mark.parametrize(
    ("max_retries", "max_attempts"),
    [pytest.param(0, 1, id="no-retries"), pytest.param(3, 4, id="three-retries")],
)
def test_task_max_attempts_is_retries_plus_one(max_retries: int, max_attempts: int) -> None:
    assert Task(id="t1", name="lp_test.task", max_retries=max_retries).max_attempts == max_attempts


def test_task_defaults() -> None:
    task = Task(id="t1", name="lp_test.task")

    assert (task.args, task.kwargs, task.max_retries, task.attempt) == ((), {}, 3, 0)
    assert task.max_attempts == 4
    assert task.created_at.utcoffset() is not None


def test_current_task_outside_task_raises_lookup_error() -> None:
    with pytest.raises(LookupError, match=r"^current_task\(\) was called outside a running task$"):
        current_task()


async def test_current_task_inside_task_returns_context() -> None:
    context = TaskContext(task_id="t1", name="lp_test.task", attempt=2, max_retries=1)
    token = set_current_task(context)
    try:
        seen = current_task()
    finally:
        token.var.reset(token)

    assert seen is context
    assert seen.is_retry
    assert seen.is_last_attempt


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        pytest.param((1, 2), {}, None, id="fits"),
        pytest.param((1,), {"b": 2}, None, id="keyword"),
        pytest.param((1,), {}, r"missing a required argument: 'b'$", id="too-few"),
        pytest.param((1, 2, 3), {}, r"too many positional arguments$", id="too-many"),
        pytest.param((1, 2), {"c": 3}, r"got an unexpected keyword argument 'c'$", id="extra"),
    ],
)
def test_check_call_of_plain_parameters_checks_count_and_keywords(
    args: tuple[int, ...], kwargs: dict[str, int], error: str | None
) -> None:
    @register_task(name="lp_test.pair")
    def pair(a: int, b: int) -> int:
        return a + b

    entry = registry.get("lp_test.pair")

    if error is None:
        entry.check_call(args, kwargs)
    else:
        with pytest.raises(InvalidArguments, match=rf"^task 'lp_test.pair': {error}"):
            entry.check_call(args, kwargs)


def test_new_task_ids_are_distinct_time_ordered_uuid7s() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [*new_task_ids(50), new_task_id()]
    after_ms = time.time_ns() // 1_000_000

    assert len(set(ids)) == len(ids)
    for text in ids:
        value = uuid.UUID(hex=text)
        assert (len(text), value.version, value.variant) == (32, 7, uuid.RFC_4122)
        assert before_ms <= value.int >> 80 <= after_ms
