"""JSON with a few more types, for task arguments, return values and results.

Plain JSON turns a tuple into a list and a datetime into an error. Looplane promises exact
round-trips for JSON types plus tuple, datetime, date, UUID, Decimal, bytes and big ints, so
those types travel as tagged objects ``{"__lp__": <type>, "v": <text or list>}``. A dict whose
keys are not all strings, or that uses the tag key itself, travels as a tagged list of pairs,
so it is never silently changed. Anything else is refused with the path of the bad value,
before anything is stored.

The output is ASCII (``ensure_ascii``), so lone surrogates in strings survive the trip.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from looplane.errors import SerializationError

__all__ = [
    "TAG",
    "dump_text",
    "dumps",
    "encode",
    "loads",
    "quote",
    "text_of",
    "time_text",
    "type_name",
]

TAG = "__lp__"

_PLAIN = (str, int, float, bool, type(None))

# Python refuses to turn an int of more than 4300 decimal digits into text or back
# (https://github.com/python/cpython/issues/95778), so json.dumps would fail on it. Larger
# ints travel as tagged hex text, which has no such limit; 2**14000 has 4215 digits.
_MAX_PLAIN_INT_BITS = 14_000


def type_name(value: object) -> str:
    """The qualified name of `value`'s type, as errors show it."""
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class _UnsupportedError(Exception):
    """Raised inside the fast walk; the slow walk then finds and names the culprit."""


def encode(value: Any, path: str) -> Any:
    """Turn `value` into plain JSON types, tagging the extra ones.

    Raises:
        SerializationError: `value` holds a type outside the supported set; the error
            names where (`path`) and the type.
    """
    try:
        return _fast(value)
    except _UnsupportedError:
        return _checked(value, path)


def _fast(value: Any) -> Any:
    # The hot path: no path strings are built, because almost every value is encodable.
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None:
        return value
    if kind is int:
        return value if value.bit_length() <= _MAX_PLAIN_INT_BITS else {TAG: "int", "v": hex(value)}
    if kind is list:
        return [_fast(item) for item in value]
    if kind is dict:
        if TAG not in value and all(type(key) is str for key in value):
            return {key: _fast(item) for key, item in value.items()}
        return {TAG: "dict", "v": [[_fast(key), _fast(item)] for key, item in value.items()]}
    if kind is tuple:
        return {TAG: "tuple", "v": [_fast(item) for item in value]}
    scalar = _SCALARS.get(kind)
    if scalar is None:
        raise _UnsupportedError
    return scalar(value)


def _checked(value: Any, path: str) -> Any:
    kind = type(value)
    if kind is int and value.bit_length() > _MAX_PLAIN_INT_BITS:
        return {TAG: "int", "v": hex(value)}
    if kind in _PLAIN:
        return value
    if kind is list:
        return [_checked(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if kind is dict:
        return _encode_dict(value, path)
    if kind is tuple:
        return {TAG: "tuple", "v": [_checked(item, f"{path}[{i}]") for i, item in enumerate(value)]}
    return _encode_scalar(value, path)


def _encode_dict(value: dict[Any, Any], path: str) -> Any:
    if all(type(key) is str for key in value) and TAG not in value:
        return {key: _checked(item, f"{path}[{key!r}]") for key, item in value.items()}
    pairs = [
        [_checked(key, f"{path}<key {key!r}>"), _checked(item, f"{path}[{key!r}]")]
        for key, item in value.items()
    ]
    return {TAG: "dict", "v": pairs}


_SCALARS: dict[type, Any] = {
    datetime: lambda value: {TAG: "datetime", "v": value.isoformat()},
    date: lambda value: {TAG: "date", "v": value.isoformat()},
    uuid.UUID: lambda value: {TAG: "uuid", "v": str(value)},
    Decimal: lambda value: {TAG: "decimal", "v": str(value)},
    bytes: lambda value: {TAG: "bytes", "v": base64.b64encode(value).decode("ascii")},
}


def _encode_scalar(value: Any, path: str) -> Any:
    scalar = _SCALARS.get(type(value))
    if scalar is not None:
        return scalar(value)
    name = type_name(value)
    raise SerializationError(
        f"{path} has type {name}, which cannot be encoded (supported: JSON types, tuple, "
        "datetime, date, UUID, Decimal, bytes)",
        path=path,
        type_name=name,
    )


# Limitation: on Python versions whose C fromisoformat drops a UTC offset's sub-second part
# when its seconds part is 0 (+00:00:00.000001 reads back as UTC), such a datetime does not
# round-trip exactly. No real time zone has a sub-second offset.
# Lifted by: a Python with the upstream fix, https://github.com/python/cpython/issues/152079
def _decode_tagged(obj: dict[str, Any]) -> Any:
    tag = obj.get(TAG)
    if tag is None:
        return obj
    raw = obj.get("v")
    try:
        return _DECODERS[tag](raw)
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise SerializationError(f"bad tagged value {tag!r}: {exc}") from None


def _expect(kind: type, parse: Any) -> Any:
    """Wrap `parse` so that it refuses a raw value that is not a `kind`.

    Tagged values may come from bytes no Looplane producer wrote; without the check a
    string would become a tuple of characters, and a number an AttributeError.
    """

    def decode(raw: Any) -> Any:
        if not isinstance(raw, kind):
            raise TypeError(f"expected a {kind.__name__}, got {type(raw).__name__}")
        return parse(raw)

    return decode


def _decode_dict(pairs: list[Any]) -> dict[Any, Any]:
    if not all(type(pair) is list and len(pair) == 2 for pair in pairs):
        raise ValueError("expected a list of [key, value] pairs")
    return {_hashable(key): item for key, item in pairs}


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        raise ValueError("a list cannot be a dict key")
    return key


_DECODERS: dict[str, Any] = {
    "tuple": _expect(list, tuple),
    "dict": _expect(list, _decode_dict),
    "int": _expect(str, lambda text: int(text, 16)),
    "datetime": _expect(str, datetime.fromisoformat),
    "date": _expect(str, date.fromisoformat),
    "uuid": _expect(str, uuid.UUID),
    "decimal": _expect(str, Decimal),
    "bytes": _expect(str, lambda text: base64.b64decode(text.encode("ascii"), validate=True)),
}


# One encoder and one decoder for every call: `json.dumps` and `json.loads` with options build
# a new one each time, which costs as much as encoding a small task. Both are stateless
# between calls, so sharing them across threads is safe.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
_DECODER = json.JSONDecoder(object_hook=_decode_tagged)

dump_text = _ENCODER.encode
"""Compact ASCII JSON text of plain JSON values (the output of `encode`), as `json.dumps`."""


quote = json.encoder.encode_basestring_ascii
"""The JSON text of a string, quoted as ``json.dumps(ensure_ascii=True)`` quotes it."""


def text_of(value: Any, path: str) -> str:
    """The JSON text ``dump_text(encode(value, path))`` writes, made directly for a scalar.

    Records of a known shape (a task, a result) are written field by field with this, which
    costs half of encoding them as one dict; the text is the same.

    Raises:
        SerializationError: `value` holds a type outside the supported set.
    """
    kind = type(value)
    if kind is str:
        return quote(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int and value.bit_length() <= _MAX_PLAIN_INT_BITS:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return dump_text(encode(value, path))


# The last datetime `time_text` was asked to remember, and its text: every task of a
# received batch has the same `fetched_at` object. One tuple, replaced whole, so threads
# never see half an update.
_last_time: tuple[datetime | None, str] = (None, "null")


def time_text(value: Any, path: str, *, remember: bool = True) -> str:
    """`text_of` for a value that is almost always a datetime or None (result timestamps).

    With ``remember=False`` the text is not kept for the next call: a timestamp that never
    repeats (a start or finish time) then leaves the last repeating one (`fetched_at`) in place.
    """
    global _last_time
    last, text = _last_time
    if value is last:
        return text
    if type(value) is datetime:
        # isoformat() writes only ASCII digits and punctuation: nothing to escape.
        text = '{"' + TAG + '":"datetime","v":"' + value.isoformat() + '"}'
        if remember:
            _last_time = (value, text)
        return text
    return dump_text(encode(value, path))


def dumps(value: Any, *, path: str = "value") -> bytes:
    """Encode `value` to ASCII JSON bytes.

    Raises:
        SerializationError: `value` holds a type that cannot be encoded.
    """
    try:
        text = dump_text(encode(value, path))
    except RecursionError:
        raise SerializationError(f"{path} is nested too deeply to encode", path=path) from None
    except ValueError as exc:
        # Only reachable when sys.set_int_max_str_digits() was lowered below the digits
        # of an int that stays untagged.
        raise SerializationError(f"{path} cannot be encoded: {exc}", path=path) from None
    return text.encode("ascii")


def loads(data: bytes | str) -> Any:
    """Decode bytes written by `dumps`.

    Raises:
        SerializationError: The bytes are not valid encoded JSON.
    """
    # The usual call decodes text that Looplane wrote, with no whitespace around the record:
    # a raw decode that ends at the end of the text is the whole answer. Anything else
    # (bytes, a failed or partial decode) takes the full path, which names any error.
    if type(data) is str and not data.startswith("\ufeff"):
        try:
            value, end = _DECODER.raw_decode(data)
        except (ValueError, RecursionError):
            return _loads(data)
        if end == len(data):
            return value
    return _loads(data)


def _loads(data: bytes | str) -> Any:
    try:
        if isinstance(data, bytes | bytearray):
            # What json.loads does with bytes: guess the UTF flavour, keep lone surrogates.
            data = data.decode(json.detect_encoding(data), "surrogatepass")
        elif data.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
        # Looplane writes no whitespace around a record, so a raw decode that ends at the end
        # of the text is the whole answer; anything else is decoded again in full, which
        # allows the whitespace JSON allows and names any error.
        with contextlib.suppress(ValueError):
            value, end = _DECODER.raw_decode(data)
            if end == len(data):
                return value
        return _DECODER.decode(data)
    except SerializationError:
        raise
    except (ValueError, RecursionError) as exc:
        raise SerializationError(f"cannot decode JSON: {exc}") from None
