"""tensors.all_finite against its definition, isfinite(tensor).all(), where the fast sum and the exact
extremes part ways: non-finite values anywhere, and finite values whose sum overflows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptrain.tensors import all_finite

FLOATS = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def oracle(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 1, 4095, 4096, -1])
def test_one_non_finite_value_anywhere_is_found(dtype, bad, where):
    tensor = torch.randn(4097, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert all_finite(tensor) and oracle(tensor)
    tensor[where] = bad
    assert not all_finite(tensor)


@pytest.mark.parametrize("dtype", FLOATS)
def test_finite_values_whose_sum_overflows_are_finite(dtype):
    largest = torch.finfo(dtype).max
    tensor = torch.full((1000,), largest, dtype=dtype)
    assert torch.isinf(tensor.sum()) and oracle(tensor)  # the sum overflows; every value is finite
    assert all_finite(tensor) and all_finite(-tensor)


def test_infinities_of_both_signs_are_found_though_they_cancel_into_nan():
    assert not all_finite(torch.tensor([float("inf"), float("-inf"), 1.0]))


def test_integers_and_empty_tensors_are_finite():
    assert all_finite(torch.arange(5)) and all_finite(torch.empty(0)) and all_finite(torch.tensor(True))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64),
       st.sampled_from(FLOATS))
def test_all_finite_is_isfinite_all(values, dtype):
    tensor = torch.tensor(values, dtype=torch.float32).to(dtype)
    assert all_finite(tensor) == oracle(tensor)
