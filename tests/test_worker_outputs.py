"""Handler answers become the bytes TorchServe sends: json.dumps(value, indent=2), whichever
encoder writes them."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyserve.worker._json import dumps_indent2
from pyserve.worker.outputs import encode_body

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-2**200, 2**200)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text())
PLAIN = st.recursive(SCALARS, lambda children: st.lists(children, max_size=5)
                     | st.tuples(children, children)
                     | st.dictionaries(st.text(max_size=8), children, max_size=5), max_leaves=30)


def python_json(value) -> bytes:
    return json.dumps(value, indent=2).encode("utf-8")


@settings(max_examples=500, deadline=None)
@given(PLAIN)
def test_plain_values_are_written_exactly_as_json_dumps_writes_them(value):
    assert dumps_indent2(value) == python_json(value)


@pytest.mark.parametrize("value", [
    "\u00e9\u4e2d\U0001f600\x7f\x00\x1f\"\\/", "\ud800", -0.0, 1e300, 5e-324, 1.0, 2**64, -(2**63),
    float("nan"), float("inf"), -float("inf"), [[], {}, ()], {"a": {"b": [1, 2.5, None]}},
])
def test_awkward_plain_values_are_written_as_json_dumps_writes_them(value):
    encoded = dumps_indent2(value)
    assert encoded == python_json(value) or (isinstance(value, float) and math.isnan(value)
                                             and encoded == b"NaN")


class Floaty(float):
    pass


@pytest.mark.parametrize("value", [
    {1: "int key"}, {None: 1}, Floaty(1.5), OrderedDict(a=1), {"a": {1, 2}}, b"bytes", object(),
])
def test_anything_else_is_left_to_json_dumps(value):
    assert dumps_indent2(value) is None


def test_an_int_too_long_for_python_to_print_is_left_to_json_dumps():
    assert dumps_indent2([10**5000]) is None


def test_a_cycle_is_left_to_json_dumps_which_refuses_it():
    cycle: list = []
    cycle.append(cycle)
    assert dumps_indent2(cycle) is None
    with pytest.raises(ValueError):
        encode_body(cycle)


def test_encode_body_falls_back_to_json_dumps_for_other_values():
    assert encode_body({1: 2}) == b'{\n  "1": 2\n}'
    assert encode_body(OrderedDict(a=1)) == b'{\n  "a": 1\n}'
