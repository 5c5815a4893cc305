"""Round-trip and refusal tests for the argument codec (`looplane._codec`).

`assert_same` and the `codec_values` strategy are also used by the serializer tests.
"""

from __future__ import annotations

import inspect
import math
import re
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looplane import _codec
from looplane.errors import SerializationError

if TYPE_CHECKING:
    from collections.abc import Callable


def assert_same(actual: Any, expected: Any, path: str = "value") -> None:
    """Assert that `actual` equals `expected` with the very same type at every level.

    Plain ``==`` is not enough: ``1 == 1.0 == True``, ``-0.0 == 0.0`` and ``nan != nan``.
    Dict keys are compared in order, with their types.
    """
    assert type(actual) is type(expected), (
        f"{path}: got {type(actual).__name__}, expected {type(expected).__name__}"
    )
    if isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{path}: length differs"
        for i, (got, want) in enumerate(zip(actual, expected, strict=True)):
            assert_same(got, want, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert len(actual) == len(expected), f"{path}: size differs"
        for (got_key, got), (want_key, want) in zip(actual.items(), expected.items(), strict=True):
            assert_same(got_key, want_key, f"{path}<key {want_key!r}>")
            assert_same(got, want, f"{path}[{want_key!r}]")
    elif isinstance(expected, float) and math.isnan(expected):
        # JSON has one NaN, so the sign and payload bits of a NaN are not kept.
        assert math.isnan(actual), path
    elif isinstance(expected, float):
        assert actual == expected, path
        assert math.copysign(1.0, actual) == math.copysign(1.0, expected), f"{path}: sign"
    elif isinstance(expected, Decimal):
        assert actual.as_tuple() == expected.as_tuple(), path
    elif isinstance(expected, datetime):
        assert actual == expected, path
        assert actual.replace(tzinfo=None) == expected.replace(tzinfo=None), f"{path}: wall time"
        assert actual.utcoffset() == expected.utcoffset(), f"{path}: offset"
    else:
        assert actual == expected, path


# Lone surrogates, emoji and escapes are rare in hypothesis's default text, so they are
# mixed in on purpose.
_awkward_chars = st.sampled_from(["\udcff", "\ud800", "😀", "é", "中", "\x00", '"', "\\", "\u2028"])
texts = st.text(st.one_of(st.characters(exclude_categories=()), _awkward_chars), max_size=20)
ints = st.one_of(st.integers(), st.integers(min_value=-(2**200), max_value=2**200))
floats = st.one_of(st.floats(), st.sampled_from([-0.0, 0.0, math.inf, -math.inf]))
# Whole seconds only: CPython's fromisoformat drops a sub-second offset whose seconds part
# is 0 (see the Limitation note in looplane/_codec.py); no real time zone has one.
offsets = st.integers(min_value=-86_399, max_value=86_399).map(
    lambda seconds: timezone(timedelta(seconds=seconds))
)
datetimes = st.one_of(st.datetimes(), st.datetimes(timezones=offsets))
decimals = st.decimals(allow_nan=False)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    floats,
    texts,
    datetimes,
    st.dates(),
    st.uuids(),
    decimals,
    st.binary(max_size=20),
)
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=False),
    texts,
    datetimes,
    st.dates(),
    st.uuids(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.binary(max_size=10),
)
hashable_keys = st.recursive(
    hashable_scalars, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=5
)
str_keys = st.one_of(texts, st.sampled_from([_codec.TAG, "v"]))

codec_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(str_keys, inner, max_size=4),
        st.dictionaries(hashable_keys, inner, max_size=4),
    ),
    max_leaves=15,
)


@settings(deadline=None)
@given(codec_values)
def test_dumps_loads_round_trips_exactly(value: Any) -> None:
    data = _codec.dumps(value)

    assert data.isascii()
    assert_same(_codec.loads(data), value)


@settings(deadline=None)
@given(codec_values)
def test_loads_accepts_text_as_well_as_bytes(value: Any) -> None:
    assert_same(_codec.loads(_codec.dumps(value).decode("ascii")), value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(2**64, id="2**64"),
        pytest.param(-(2**64) - 1, id="minus-2**64-1"),
        pytest.param(2**14_000, id="2**14000-largest-plain"),
        pytest.param(2**14_000 * 2, id="2**14001-smallest-tagged"),
        pytest.param(10**5000, id="10**5000"),
        pytest.param(-(10**5000), id="minus-10**5000"),
    ],
)
def test_dumps_loads_round_trips_big_ints(value: int) -> None:
    """Ints past Python's 4300-digit text limit must not fail in json.dumps."""
    assert_same(_codec.loads(_codec.dumps(value)), value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(-0.0, id="negative-zero"),
        pytest.param(math.inf, id="inf"),
        pytest.param(-math.inf, id="minus-inf"),
        pytest.param(math.nan, id="nan"),
        pytest.param(5e-324, id="smallest-subnormal"),
        pytest.param(1.0, id="integral-float-stays-float"),
    ],
)
def test_dumps_loads_round_trips_special_floats(value: float) -> None:
    assert_same(_codec.loads(_codec.dumps(value)), value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("NaN", id="nan"),
        pytest.param("-NaN", id="negative-nan"),
        pytest.param("sNaN", id="signalling-nan"),
        pytest.param("Infinity", id="infinity"),
        pytest.param("-0", id="negative-zero"),
        pytest.param("1.10", id="trailing-zero"),
        pytest.param("1E+3", id="exponent"),
    ],
)
def test_dumps_loads_keeps_decimal_digits_and_specials(text: str) -> None:
    """NaN is not equal to itself, so these compare by sign, digits and exponent."""
    value = Decimal(text)

    assert_same(_codec.loads(_codec.dumps(value)), value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(datetime(2024, 2, 29, 23, 59, 59, 999_999), id="naive-microseconds"),
        pytest.param(datetime(2024, 1, 1, tzinfo=UTC), id="utc"),
        pytest.param(
            datetime(2024, 1, 1, 12, 30, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=45))),
            id="plus-0545",
        ),
        pytest.param(
            datetime(2024, 1, 1, tzinfo=timezone(-timedelta(hours=9, seconds=30))),
            id="minus-0900-with-seconds",
        ),
        pytest.param(
            datetime(1, 1, 1, tzinfo=timezone(timedelta(minutes=1, microseconds=5))),
            id="year-1-offset-with-microseconds",
        ),
        pytest.param(date(1, 1, 1), id="date-min"),
        pytest.param(date(9999, 12, 31), id="date-max"),
        pytest.param(uuid.UUID(int=0), id="uuid-nil"),
        pytest.param(b"\x00\xff" * 3, id="bytes"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param((), id="empty-tuple"),
        pytest.param(((1, (2.0,)), [("x",)]), id="nested-tuples"),
        pytest.param({(1, ("a", b"b")): "tuple key", 2: "int key"}, id="tuple-and-int-keys"),
        pytest.param({True: 1, None: 2, 1.5: 3}, id="bool-none-float-keys"),
        pytest.param({date(2024, 1, 1): [1]}, id="date-key"),
    ],
)
def test_dumps_loads_round_trips_tagged_types(value: Any) -> None:
    assert_same(_codec.loads(_codec.dumps(value)), value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({_codec.TAG: "x"}, id="tag-key-only"),
        pytest.param({_codec.TAG: None}, id="tag-key-none"),
        pytest.param({_codec.TAG: "tuple", "v": [1, 2]}, id="looks-like-tagged-tuple"),
        pytest.param({_codec.TAG: "bytes", "v": "AA=="}, id="looks-like-tagged-bytes"),
        pytest.param({"outer": {_codec.TAG: "dict", "v": []}}, id="nested-looks-like-dict"),
        pytest.param({_codec.TAG: {_codec.TAG: 1}}, id="tag-inside-tag"),
    ],
)
def test_dumps_loads_keeps_user_dict_with_tag_key(value: dict[str, Any]) -> None:
    assert_same(_codec.loads(_codec.dumps(value)), value)


class Colour(StrEnum):
    RED = "red"


async def _coroutine() -> None:
    return None


def _generator() -> Any:
    yield 1


UNSUPPORTED = [
    pytest.param(lambda: {1, 2}, "set", id="set"),
    pytest.param(object, "object", id="object"),
    pytest.param(_coroutine, "coroutine", id="coroutine"),
    pytest.param(_generator, "generator", id="generator"),
    pytest.param(lambda: Colour.RED, f"{__name__}.Colour", id="str-enum-member"),
    pytest.param(lambda: bytearray(b"x"), "bytearray", id="bytearray"),
]


@pytest.mark.parametrize(("make", "type_name"), UNSUPPORTED)
@pytest.mark.parametrize(
    ("wrap", "path"),
    [
        pytest.param(lambda bad: [1, bad], "args[1]", id="in-args"),
        pytest.param(lambda bad: {"when": bad}, "kwargs['when']", id="in-kwargs"),
        pytest.param(lambda bad: {"x": [(0, bad)]}, "kwargs['x'][0][1]", id="nested"),
    ],
)
def test_dumps_refuses_unsupported_type_naming_path_and_type(
    make: Callable[[], object],
    type_name: str,
    wrap: Callable[[object], object],
    path: str,
) -> None:
    bad = make()
    root = path.split("[", 1)[0]
    message = rf"^{re.escape(path)} has type {re.escape(type_name)}, which cannot be encoded"
    try:
        with pytest.raises(SerializationError, match=message) as info:
            _codec.dumps(wrap(bad), path=root)
    finally:
        if inspect.iscoroutine(bad):
            bad.close()

    assert isinstance(info.value, TypeError)
    assert info.value.path == path
    assert info.value.type_name == type_name


def test_dumps_refuses_unsupported_dict_key_naming_it() -> None:
    with pytest.raises(SerializationError, match=r"^kwargs<key frozenset\(\)> has type frozenset"):
        _codec.dumps({frozenset(): 1}, path="kwargs")


def _nested_lists(depth: int) -> list[Any]:
    root: list[Any] = []
    inner = root
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return root


def test_dumps_refuses_too_deep_nesting_without_crashing() -> None:
    with pytest.raises(SerializationError, match=r"^args is nested too deeply to encode$"):
        _codec.dumps(_nested_lists(100_000), path="args")


def test_dumps_refuses_self_containing_list_without_crashing() -> None:
    loop: list[Any] = []
    loop.append(loop)

    with pytest.raises(SerializationError, match=r"^value is nested too deeply to encode$"):
        _codec.dumps(loop)


def test_loads_refuses_too_deep_nesting_without_crashing() -> None:
    with pytest.raises(SerializationError, match=r"^cannot decode JSON: maximum recursion"):
        _codec.loads(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xfe\xfa", id="not-utf8"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[1,]", id="trailing-comma"),
    ],
)
def test_loads_refuses_invalid_json(data: bytes) -> None:
    with pytest.raises(SerializationError, match=r"^cannot decode JSON: "):
        _codec.loads(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"__lp__":"nope","v":1}', id="unknown-tag"),
        pytest.param(b'{"__lp__":[],"v":1}', id="unhashable-tag"),
        pytest.param(b'{"__lp__":"tuple"}', id="missing-v"),
        pytest.param(b'{"__lp__":"tuple","v":"abc"}', id="tuple-from-text"),
        pytest.param(b'{"__lp__":"dict","v":{"ab":1}}', id="dict-from-object"),
        pytest.param(b'{"__lp__":"dict","v":[[1,2,3]]}', id="dict-pair-of-three"),
        pytest.param(b'{"__lp__":"dict","v":[[[1],2]]}', id="dict-list-key"),
        pytest.param(b'{"__lp__":"dict","v":[[{"a":1},2]]}', id="dict-object-key"),
        pytest.param(b'{"__lp__":"uuid","v":123}', id="uuid-from-number"),
        pytest.param(b'{"__lp__":"uuid","v":"xyz"}', id="uuid-bad-text"),
        pytest.param(b'{"__lp__":"bytes","v":123}', id="bytes-from-number"),
        pytest.param(b'{"__lp__":"bytes","v":"!!"}', id="bytes-bad-base64"),
        pytest.param(b'{"__lp__":"decimal","v":"one"}', id="decimal-bad-text"),
        pytest.param(b'{"__lp__":"decimal","v":[1]}', id="decimal-from-list"),
        pytest.param(b'{"__lp__":"datetime","v":"yesterday"}', id="datetime-bad-text"),
        pytest.param(b'{"__lp__":"date","v":null}', id="date-from-null"),
        pytest.param(b'{"__lp__":"int","v":"0xzz"}', id="int-bad-hex"),
    ],
)
def test_loads_refuses_corrupt_tagged_value(data: bytes) -> None:
    with pytest.raises(SerializationError, match=r"^bad tagged value "):
        _codec.loads(data)


@settings(deadline=None)
@given(codec_values)
def test_text_of_writes_what_encoding_the_whole_value_writes(value: Any) -> None:
    assert _codec.text_of(value, "value") == _codec.dump_text(_codec.encode(value, "value"))


@settings(deadline=None)
@given(st.one_of(datetimes, codec_values))
def test_time_text_writes_what_encoding_the_whole_value_writes(value: Any) -> None:
    expected = _codec.dump_text(_codec.encode(value, "value"))

    assert _codec.time_text(value, "value", remember=False) == expected
    assert _codec.time_text(value, "value") == expected
    # The second call answers from the one-entry cache.
    assert _codec.time_text(value, "value") == expected


def test_text_of_refuses_unsupported_type_naming_path() -> None:
    with pytest.raises(SerializationError, match=r"^result\['value'\] has type object, "):
        _codec.text_of(object(), "result['value']")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b" [1, 2] ", [1, 2], id="spaces"),
        pytest.param(b'\n{"a": 1}\t', {"a": 1}, id="newline-tab"),
        pytest.param(" [1] ", [1], id="text"),
        pytest.param(b"\xef\xbb\xbf[1]", [1], id="utf8-bom-bytes"),
    ],
)
def test_loads_accepts_what_json_loads_accepts(data: bytes | str, expected: Any) -> None:
    assert _codec.loads(data) == expected


def test_loads_refuses_text_that_starts_with_a_bom() -> None:
    with pytest.raises(SerializationError, match=r"^cannot decode JSON: Unexpected UTF-8 BOM"):
        _codec.loads("\ufeff[1]")
