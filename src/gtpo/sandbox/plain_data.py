"""Plain data across a process boundary: a tagged JSON form of Python values that rebuilds only builtins.

The hidden-test harness passes a candidate function's arguments in and its return value out as this form,
never as objects or pickles: whatever the candidate's process sends, ``decode`` builds only ``None``,
``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``list``, ``tuple``, ``dict``, ``set`` and
``frozenset`` values, so an object whose ``__eq__`` is always true (or a subclass of ``int``, ``str`` or
``list`` that lies) cannot reach the tests. Floats travel as ``float.hex`` (exact, nan and inf included),
ints as hex (no 4300-digit limit), so a value comes back equal to what was sent.

``encode`` takes exact builtin types only: a subclass or any other object is ``NotPlainData``, as is
nesting deeper than ``MAX_DEPTH``. ``decode`` enforces the same depth and rejects unknown tags, so a
hand-forged message fails to decode instead of building anything else. What this is not: a general
serializer (identity and aliasing are lost: a list passed twice arrives as two lists). Standard library
only: it runs in the sandbox's processes.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 100
"""Containers nested deeper than this are refused (tests pass flat data; a cyclic list would not end)."""
_SMALL_INT = 1 << 53
"""Ints below this in size travel as JSON numbers; larger ones as hex strings."""


class NotPlainData(ValueError):
    """A value that has no plain-data form, or a message that is not a well-formed one."""


def encode(value: Any, depth: int = 0) -> Any:
    """The JSON-ready form of ``value``; ``NotPlainData`` names the first type that has none."""
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if -_SMALL_INT < value < _SMALL_INT else {"i": hex(value)}
    if kind is float:
        return {"f": value.hex()}
    if kind is complex:
        return {"c": [value.real.hex(), value.imag.hex()]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is list:
        return [encode(item, depth + 1) for item in value]
    if kind in _SEQUENCE_TAGS:
        return {_SEQUENCE_TAGS[kind]: [encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    raise NotPlainData(f"{_type_name(kind)}, which is not plain data")


def decode(data: Any, depth: int = 0) -> Any:
    """Rebuild a value from ``encode``'s form; anything else is ``NotPlainData`` (nothing else is built)."""
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested deeper than {MAX_DEPTH} levels")
    kind = type(data)
    if data is None or kind is bool or kind is str:
        return data
    if kind is int:
        if not -_SMALL_INT < data < _SMALL_INT:
            raise NotPlainData("a large int must travel as hex")
        return data
    if kind is list:
        return [decode(item, depth + 1) for item in data]
    if kind is not dict or len(data) != 1:
        raise NotPlainData(f"unexpected {_type_name(kind)} in a plain-data message")
    ((tag, body),) = data.items()
    try:
        return _DECODERS[tag](body, depth)
    except KeyError:
        raise NotPlainData(f"unknown plain-data tag {tag!r}") from None
    except NotPlainData:
        raise
    except (TypeError, ValueError, AttributeError) as e:  # a malformed body, or an unhashable key
        raise NotPlainData(f"malformed {tag!r} value: {type(e).__name__}: {str(e)[:100]}") from None


def _hex_int(body: Any) -> int:
    if type(body) is not str:
        raise TypeError("expected a hex string")
    return int(body, 16)


def _hex_float(body: Any) -> float:
    if type(body) is not str:
        raise TypeError("expected a hex string")
    return float.fromhex(body)


def _items(body: Any, depth: int) -> list[Any]:
    if type(body) is not list:
        raise TypeError("expected a list")
    return [decode(item, depth + 1) for item in body]


def _pairs(body: Any, depth: int) -> dict[Any, Any]:
    if type(body) is not list or not all(type(p) is list and len(p) == 2 for p in body):
        raise TypeError("expected a list of [key, value] pairs")
    return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}


def _complex(body: Any, depth: int) -> complex:
    if type(body) is not list or len(body) != 2:
        raise TypeError("expected [real, imag]")
    return complex(_hex_float(body[0]), _hex_float(body[1]))


_SEQUENCE_TAGS = {tuple: "t", set: "s", frozenset: "fs"}
_DECODERS = {
    "i": lambda body, depth: _hex_int(body),
    "f": lambda body, depth: _hex_float(body),
    "c": _complex,
    "b": lambda body, depth: bytes.fromhex(body),
    "t": lambda body, depth: tuple(_items(body, depth)),
    "s": lambda body, depth: set(_items(body, depth)),
    "fs": lambda body, depth: frozenset(_items(body, depth)),
    "d": _pairs,
}


def _type_name(kind: type) -> str:
    builtin = next((b for b in kind.__mro__ if b.__module__ == "builtins" and b is not object), None)
    name = getattr(kind, "__qualname__", "?")
    return f"{name} (a subclass of {builtin.__name__})" if builtin and builtin is not kind else name
