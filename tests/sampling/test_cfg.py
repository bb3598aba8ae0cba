"""Classifier-free guidance mixes the conditional and unconditional predictions as documented."""

from __future__ import annotations

import pytest
import torch

from crystalforge.generative.interfaces import FieldOutputs
from crystalforge.sampling.cfg import ClassifierFreeGuidance, condition_value, targets_to_conditions
from crystalforge.sampling.targets import PropertyTarget
from crystalforge.testing import tiny_batch


def _fake_predict(state, t):
    """Outputs that depend on whether condition ``p`` is visible (c: +1 everywhere, u: 0)."""
    shown = state.condition_mask["p"].double()
    n_atoms = state.atomic_numbers.shape[0]
    atom_shift = shown[state.crystal_idx][:, None]
    logits = torch.zeros(n_atoms, 4, dtype=torch.float64)
    logits[:, 1] = 2.0 * atom_shift[:, 0]
    return FieldOutputs(
        frac_coords=torch.zeros(n_atoms, 3, dtype=torch.float64) + atom_shift,
        lattice=torch.zeros(state.num_crystals, 6, dtype=torch.float64) + shown[:, None],
        atomic_numbers=logits,
    )


@pytest.fixture
def state():
    batch = tiny_batch()
    b = batch.num_crystals
    return batch.replace(properties={"p": torch.ones(b, dtype=torch.float64)},
                         condition_mask={"p": torch.ones(b, dtype=torch.bool)})  # fmt: skip


def test_scale_one_is_conditional_zero_unconditional_and_above_one_extrapolates(state):
    t = torch.full((state.num_crystals,), 0.5, dtype=torch.float64)
    one = ClassifierFreeGuidance(1.0)(_fake_predict, state, t)
    zero = ClassifierFreeGuidance(0.0)(_fake_predict, state, t)
    three = ClassifierFreeGuidance(3.0)(_fake_predict, state, t)
    assert torch.all(one.frac_coords == 1.0) and torch.all(one.lattice == 1.0)
    assert torch.all(zero.frac_coords == 0.0) and torch.all(zero.lattice == 0.0)
    assert torch.allclose(three.frac_coords, torch.full_like(three.frac_coords, 3.0))
    # logits are mixed as log-probabilities: p_u^(1-w) p_c^w up to normalisation
    lu = torch.log_softmax(torch.zeros(4, dtype=torch.float64), -1)
    lc = torch.log_softmax(torch.tensor([0.0, 2.0, 0.0, 0.0], dtype=torch.float64), -1)
    expected = lu + 3.0 * (lc - lu)
    torch.testing.assert_close(three.atomic_numbers[0], expected)
    with pytest.raises(ValueError, match=">= 0"):
        ClassifierFreeGuidance(-1.0)


def test_only_the_named_conditions_are_hidden(state):
    t = torch.full((state.num_crystals,), 0.5, dtype=torch.float64)
    other = ClassifierFreeGuidance(0.0, conditions=("q",))(_fake_predict, state, t)
    assert torch.all(other.lattice == 1.0)  # p stays visible: nothing to contrast


def test_condition_values_and_targets():
    assert condition_value("crystal_system", "Cubic") == 6.0
    assert condition_value("space_group", "225") == 225.0
    assert condition_value("band_gap", "1.5") == 1.5
    for name, text in (("space_group", "231"), ("space_group", "2.5"), ("crystal_system", "round"), ("x", "nan")):
        with pytest.raises(ValueError, match=name):
            condition_value(name, text)
    assert targets_to_conditions([PropertyTarget("gap", 1.0, 2.0)], ("gap",)) == {"gap": 1.5}
    with pytest.raises(ValueError, match="not conditioned on 'gap'"):
        targets_to_conditions([PropertyTarget("gap", 1.0, 2.0)], ("fe",))


def test_numbers_are_checked_like_text_and_categories_are_not_windows():
    assert condition_value("space_group", 225) == 225.0
    for name, value in (("space_group", 0), ("crystal_system", 7), ("band_gap", float("nan"))):
        with pytest.raises(ValueError, match=name):
            condition_value(name, value)
    with pytest.raises(ValueError, match="categorical"):
        targets_to_conditions([PropertyTarget("space_group", 224.0, 225.0)], ("space_group",))
