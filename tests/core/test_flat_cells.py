"""``raise_flat_cells``: flat cells opened up to the floor, every other cell untouched bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crystalforge.core.lattice import (
    MIN_VOLUME_FRACTION,
    lattice_from_params,
    lattice_to_params,
    raise_flat_cells,
    volume_fraction,
)
from crystalforge.testing import tiny_crystals


def _cell(lengths, angles) -> torch.Tensor:
    return torch.as_tensor(lattice_from_params(np.array(lengths, float), np.array(angles, float)))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(2.0, 12.0), min_size=3, max_size=3),
    st.lists(st.floats(20.0, 160.0), min_size=3, max_size=3),
    st.floats(0.05, 0.9),
)
def test_a_flat_cell_reaches_the_floor_and_keeps_its_lengths(lengths, angles, floor):
    try:
        lattice = _cell(lengths, angles)[None]
    except ValueError:  # not a cell at all
        assume(False)
    out = raise_flat_cells(lattice, floor)
    before, after = float(volume_fraction(lattice)[0]), float(volume_fraction(out)[0])
    if before >= floor:
        assert torch.equal(out, lattice)  # untouched, bit for bit
        assume(False)  # counted as a rejection: the examples that count are the flat ones
    assert floor <= after <= floor * (1 + 2e-6)  # the smallest change that reaches the floor
    np.testing.assert_allclose(lattice_to_params(out[0].numpy())[0], lengths, rtol=1e-12)
    assert torch.linalg.det(out[0]) > 0


def test_only_the_flat_cells_of_a_batch_change():
    data = torch.stack([torch.as_tensor(c.lattice) for c in tiny_crystals()])
    flat = _cell([4.0, 5.0, 6.0], [119.5, 120.0, 120.4])  # three angles near 120°: almost no volume
    assert float(volume_fraction(flat)) < 0.1
    batch = torch.cat([data, flat[None], torch.full((1, 3, 3), math.nan)]).to(torch.float32)
    out = raise_flat_cells(batch)
    assert torch.equal(out[: len(data)], batch[: len(data)])  # the data's cells are far above the floor
    assert float(volume_fraction(out[len(data)])) == pytest.approx(MIN_VOLUME_FRACTION, abs=1e-6)
    assert torch.isnan(out[-1]).all()  # not a cell: left for the caller's checks
    assert out.dtype == torch.float32


def test_the_floor_is_below_every_reduced_cell():
    # a Niggli-reduced cell has V / abc >= 1/sqrt(2): the rhombohedral cell of fcc (all angles 60°)
    fcc = _cell([1.0, 1.0, 1.0], [60.0, 60.0, 60.0])
    assert float(volume_fraction(fcc)) == pytest.approx(1 / math.sqrt(2))
    assert 1 / math.sqrt(2) > MIN_VOLUME_FRACTION
    cells = fcc[None]
    assert raise_flat_cells(cells) is cells  # nothing flat: the same tensor


def test_a_float32_cell_stays_above_the_floor_and_a_second_pass_changes_nothing():
    flat = _cell([3.0, 4.0, 5.0], [119.5, 120.0, 120.4])[None].to(torch.float32)
    once = raise_flat_cells(flat)
    assert float(volume_fraction(once)[0]) >= MIN_VOLUME_FRACTION
    assert torch.equal(raise_flat_cells(once), once)


def test_a_left_handed_flat_cell_stays_left_handed_with_the_same_metric_as_a_right_handed_one():
    right = _cell([4.0, 5.0, 6.0], [119.5, 120.0, 120.4])
    left = right * torch.tensor([1.0, 1.0, -1.0], dtype=right.dtype)  # a mirror: det < 0
    assert float(torch.linalg.det(left)) < 0
    opened_right, opened_left = raise_flat_cells(right[None])[0], raise_flat_cells(left[None])[0]
    assert float(torch.linalg.det(opened_left)) < 0 < float(torch.linalg.det(opened_right))
    torch.testing.assert_close(opened_left @ opened_left.T, opened_right @ opened_right.T)
