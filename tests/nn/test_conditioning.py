import math

import pytest
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.space_groups import CRYSTAL_SYSTEMS, crystal_system, crystal_system_index
from crystalforge.nn.conditioning import Conditioner, drop_conditions, with_categories
from crystalforge.testing import tiny_batch


def _live(cond: Conditioner) -> Conditioner:
    """The conditioner with a random output layer (it starts at zero by design)."""
    torch.nn.init.normal_(cond.out.weight)
    torch.nn.init.normal_(cond.null, std=0.5)
    return cond


def _with(batch: CrystalBatch, **values: tuple[torch.Tensor, torch.Tensor]) -> CrystalBatch:
    return batch.replace(
        properties={k: v for k, (v, _) in values.items()}, condition_mask={k: m for k, (_, m) in values.items()}
    )


def test_starts_at_zero_so_an_adapter_leaves_the_model_unchanged():
    cond = Conditioner(("gap",), {"gap": (1.0, 2.0)}, ("space_group",), 6).double()
    batch = tiny_batch()
    b = batch.num_crystals
    on = torch.ones(b, dtype=torch.bool)
    state = _with(batch, gap=(torch.linspace(0, 3, b).double(), on), space_group=(torch.full((b,), 225.0).double(), on))
    torch.testing.assert_close(cond(state), torch.zeros(b, 6, dtype=torch.float64))


def test_masked_missing_and_absent_conditions_give_the_null_vector():
    cond = _live(Conditioner(("gap",), {}, (), 6).double())
    batch = tiny_batch()
    b = batch.num_crystals
    values = torch.linspace(0.0, 2.0, b, dtype=torch.float64)
    mask = torch.tensor([True, False, True, False, True])
    out = cond(_with(batch, gap=(values, mask)))
    nan = torch.where(mask, values, torch.full_like(values, math.nan))
    torch.testing.assert_close(cond(_with(batch, gap=(nan, mask))), out)
    null = cond.out(cond.null[0])
    torch.testing.assert_close(out[~mask], null.expand(int((~mask).sum()), -1))
    torch.testing.assert_close(cond(batch), null.expand(b, -1))  # absent = hidden
    moved = cond(_with(batch, gap=(values + 1.0, mask)))
    assert not torch.allclose(moved[mask], out[mask])
    cond(_with(batch, gap=(nan, mask))).sum().backward()  # NaN in hidden rows never poisons gradients
    assert all(bool(torch.isfinite(p.grad).all()) for p in cond.parameters() if p.grad is not None)


def test_continuous_values_are_standardised_by_the_training_moments():
    raw = _live(Conditioner(("gap",), {}, (), 4).double())
    scaled = Conditioner(("gap",), {"gap": (2.0, 0.5)}, (), 4).double()
    scaled.load_state_dict(raw.state_dict())
    batch = tiny_batch()
    b = batch.num_crystals
    on = torch.ones(b, dtype=torch.bool)
    v = torch.linspace(-1.0, 4.0, b, dtype=torch.float64)
    torch.testing.assert_close(scaled(_with(batch, gap=(v, on))), raw(_with(batch, gap=((v - 2.0) / 0.5, on))))


def test_categories_are_embeddings_not_floats():
    cond = _live(Conditioner((), {}, ("space_group", "crystal_system"), 8).double())
    batch = tiny_batch()
    b = batch.num_crystals
    on = torch.ones(b, dtype=torch.bool)
    sg = torch.tensor([1.0, 2.0, 225.0, 226.0, 229.0], dtype=torch.float64)
    out = cond(with_categories(_with(batch, space_group=(sg, on)), cond.categories))
    # neighbouring numbers are unrelated classes: 225 and 226 differ as much as any pair
    assert not torch.allclose(out[2], out[3])
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="unknown categorical"):
        Conditioner((), {}, ("colour",), 4)
    with pytest.raises(ValueError, match="both continuous and categorical"):
        Conditioner(("space_group",), {}, ("space_group",), 4)


def test_crystal_system_is_derived_from_the_benchmark_space_group_column():
    batch = tiny_batch()
    numbers = [1.0, 15.0, 16.0, 194.0, math.nan]
    sg = torch.tensor(numbers, dtype=torch.float64)
    out = with_categories(batch.replace(properties={"spacegroup.number": sg}), ("space_group", "crystal_system"))
    cs = out.properties["crystal_system"]
    assert cs[:4].tolist() == [crystal_system_index(int(n)) for n in numbers[:4]]
    assert math.isnan(float(cs[4])) and not bool(out.condition_mask["crystal_system"][4])
    torch.testing.assert_close(out.properties["space_group"], sg, equal_nan=True)
    assert [CRYSTAL_SYSTEMS[int(i)] for i in cs[:4]] == ["triclinic", "monoclinic", "orthorhombic", "hexagonal"]
    assert crystal_system(230) == "cubic" and crystal_system(143) == "trigonal"
    with pytest.raises(ValueError, match=r"1\.\.230"):
        crystal_system(0)
    given = batch.replace(properties={"space_group": sg, "crystal_system": torch.zeros(5, dtype=torch.float64)})
    assert with_categories(given, ("crystal_system",)) is given  # values a batch has are kept


def test_condition_dropout_hides_all_together_and_each_alone():
    batch = tiny_batch()
    b = 4000
    big = batch.index_select([0] * b)
    on = torch.ones(b, dtype=torch.bool)
    state = _with(big, a=(torch.ones(b, dtype=torch.float64), on), c=(torch.ones(b, dtype=torch.float64), on))
    g = torch.Generator().manual_seed(0)
    out = drop_conditions(state, ("a", "c"), 0.2, generator=g)
    a, c = out.condition_mask["a"].double(), out.condition_mask["c"].double()
    assert abs(float(a.mean()) - 0.8 * 0.8) < 0.03
    hidden_both = float(((a == 0) & (c == 0)).double().mean())
    assert abs(hidden_both - (0.2 + 0.8 * 0.04)) < 0.03  # all at once, or each alone
    assert drop_conditions(state, ("a",), 0.0) is state
