"""Plain data: values round-trip exactly, and nothing but builtins is ever built from a message."""

from __future__ import annotations

import json
import math

import pytest

from gtpo.sandbox.plain_data import MAX_DEPTH, NotPlainData, decode, encode


def roundtrip(value):
    return decode(json.loads(json.dumps(encode(value))))


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        2**53 - 1,
        2**53,
        -(2**20000),  # past the 4300-digit int/str limit: travels as hex
        1.5,
        -0.0,
        float("inf"),
        1e-310,
        3 + 4j,
        "",
        "caf\u00e9 \ud800",  # a lone surrogate survives (the protocol sends ASCII-escaped JSON)
        b"\x00\xff",
        [1, [2, [3]]],
        (1, "a", (2.5,)),
        {"a": 1, 2: [3], (1, 2): None, frozenset({1}): {3}},
        {1, 2, 3},
        frozenset({"x"}),
        [],
        (),
        {},
    ],
    ids=lambda v: type(v).__name__,
)
def test_values_come_back_equal_and_of_the_same_type(value):
    back = roundtrip(value)
    assert back == value and type(back) is type(value)


def test_nan_keeps_its_bits_and_types_nest_exactly():
    assert math.isnan(roundtrip(float("nan")))
    assert math.copysign(1.0, roundtrip(-0.0)) == -1.0
    nested = roundtrip({"k": (True, 1, 1.0)})
    assert [type(v) for v in nested["k"]] == [bool, int, float]  # True, 1 and 1.0 stay apart
    assert list(roundtrip({"b": 1, "a": 2})) == ["b", "a"]  # dict order kept


class AlwaysEqual:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    def __hash__(self):
        return 0


class LyingInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class LyingStr(str):
    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


class LyingList(list):
    def __eq__(self, other):
        return True


class LyingDict(dict):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize(
    "value",
    [AlwaysEqual(), LyingInt(3), LyingStr("x"), LyingList([1]), LyingDict(), [1, LyingInt(2)], {"k": AlwaysEqual()}],
)
def test_objects_and_subclasses_that_could_lie_have_no_plain_form(value):
    with pytest.raises(NotPlainData, match="not plain data"):
        encode(value)


def test_a_subclass_is_named_with_its_builtin_base():
    with pytest.raises(NotPlainData, match=r"LyingInt \(a subclass of int\)"):
        encode(LyingInt(1))


@pytest.mark.parametrize(
    "message",
    [
        {"obj": "AlwaysEqual"},  # unknown tag
        {"i": "10", "f": "0x1p+0"},  # two tags in one
        {"i": 10},  # body of the wrong type
        {"f": "not-a-float"},
        {"b": "zz"},
        {"d": [[[1], 2]]},  # an unhashable key
        {"s": [[1]]},
        {"d": [[1]]},  # a pair that is not a pair
        {"c": ["0x1p+0"]},
        1.5,  # floats travel as hex only
        2**60,  # large ints travel as hex only
        {"t": "abc"},
    ],
)
def test_forged_messages_fail_to_decode(message):
    with pytest.raises(NotPlainData):
        decode(message)


def test_depth_is_bounded_both_ways():
    deep: list = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(NotPlainData, match="nested deeper"):
        encode(deep)
    forged: object = []
    for _ in range(MAX_DEPTH + 5):
        forged = [forged]
    with pytest.raises(NotPlainData, match="nested deeper"):
        decode(forged)
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(NotPlainData, match="nested deeper"):
        encode(cyclic)
