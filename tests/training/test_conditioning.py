"""Conditioning really steers: a conditioned model, trained from scratch or as an adapter on an
unconditional one, moves what it generates when the condition changes, and guidance scales it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crystalforge.core.crystal import Crystal
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import SamplePlan, SamplerConfig, last_state
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.registry import build_model
from crystalforge.sampling.cfg import ClassifierFreeGuidance
from crystalforge.sampling.templates import template_from_compositions
from crystalforge.training.adapters import apply_freeze, init_weights, pretrained_names
from crystalforge.training.checkpoint import save_checkpoint

TINY = BackboneConfig(hidden=32, layers=2, fourier_frequencies=2, time_dim=8)


def _two_phases(n: int = 32) -> list[Crystal]:
    """One-atom cubic Cu cells, half at a = 2.3 Å (p = 0), half at a = 3.0 Å (p = 1)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = i % 2
        a = (2.3 if p == 0 else 3.0) * (1.0 + 0.01 * rng.standard_normal())
        out.append(Crystal(np.array([29]), np.zeros((1, 3)), np.eye(3) * a, properties={"p": float(p)}))
    return out


def _fit(model, crystals: list[Crystal], steps: int, lr: float = 3e-3) -> None:
    from crystalforge.core.batch import CrystalBatch

    torch.manual_seed(0)
    batch = CrystalBatch.collate(crystals, dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model.loss(batch, generator=g)["loss"].backward()
        opt.step()
    model.eval()


def _volumes(model, p: float | None, scale: float = 1.0, n: int = 64) -> np.ndarray:
    template = template_from_compositions([[29]] * n, dtype=torch.float32)
    if p is not None:
        template = template.replace(
            properties={"p": torch.full((n,), p)}, condition_mask={"p": torch.ones(n, dtype=torch.bool)}
        )
    plan = SamplePlan(SamplerConfig(steps=20), guidance=(ClassifierFreeGuidance(scale=scale),))
    with torch.no_grad():
        state = last_state(model.sample(template, plan, generator=torch.Generator().manual_seed(1)))
    return state.volume.double().numpy()


@pytest.fixture(scope="module")
def data():
    crystals = _two_phases()
    return crystals, compute_dataset_stats(crystals)


def test_a_conditioned_model_follows_its_condition(data):
    crystals, stats = data
    config = ModelConfig(task="csp", backbone=TINY, properties=("p",), property_moments={"p": (0.5, 0.5)})
    model = build_model(config, stats)
    _fit(model, crystals, 150)
    small, large = _volumes(model, 0.0), _volumes(model, 1.0)
    # the two phases' volumes are 12.2 and 27 Å^3; the condition picks one
    assert np.median(small) < 17.0 < np.median(large)
    assert np.mean(small < 19.6) > 0.8 and np.mean(large > 19.6) > 0.8
    # scale 0 = unconditional: both phases appear
    mixed = _volumes(model, 1.0, scale=0.0)
    assert 0.15 < np.mean(mixed > 19.6) < 0.85


def test_an_adapter_on_an_unconditional_model_learns_the_condition(data, tmp_path):
    crystals, stats = data
    base = build_model(ModelConfig(task="csp", backbone=TINY), stats)
    _fit(base, crystals, 150)
    path = save_checkpoint(tmp_path / "base.pt", family="joint", config={}, weights=base.state_dict(),
                           dataset_stats=stats.to_dict(), metrics={})  # fmt: skip
    config = ModelConfig(task="csp", backbone=TINY, properties=("p",), property_moments={"p": (0.5, 0.5)})
    model = build_model(config, stats)
    new = init_weights(model, str(path))
    assert new and all(k.startswith("backbone.conditioner.") for k in new)
    # the added layers start at zero: the adapted model is the base model until trained
    before = _volumes(model, 1.0)
    np.testing.assert_allclose(before, _volumes(base, None), rtol=1e-5)
    frozen = apply_freeze(model, ["pretrained"], pretrained_names(model, new))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert frozen > 0 and trainable and all(n.startswith("backbone.conditioner.") for n in trainable)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    _fit(model, crystals, 150)
    assert all(torch.equal(weights[n], p) for n, p in model.named_parameters() if not p.requires_grad)
    small, large = _volumes(model, 0.0), _volumes(model, 1.0)
    assert np.median(large) - np.median(small) > 8.0


def test_init_from_refuses_weights_that_do_not_fit(data, tmp_path):
    _, stats = data
    model = build_model(ModelConfig(task="csp", backbone=TINY), stats)
    wide = build_model(ModelConfig(task="csp", backbone=BackboneConfig(hidden=48, layers=2, fourier_frequencies=2,
                                                                       time_dim=8)), stats)  # fmt: skip
    conditioned = build_model(ModelConfig(task="csp", backbone=TINY, properties=("p",)), stats)

    def saved(m, name):
        return str(save_checkpoint(tmp_path / name, family="joint", config={}, weights=m.state_dict(),
                                   dataset_stats=stats.to_dict(), metrics={}))  # fmt: skip

    with pytest.raises(ValueError, match="do not fit"):
        init_weights(model, saved(wide, "wide.pt"))
    with pytest.raises(ValueError, match="does not"):
        init_weights(model, saved(conditioned, "cond.pt"))  # a layer the new config lacks
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped model"):
        init_weights(model, "no-such-model")
    with pytest.raises(ValueError, match="matches no parameter"):
        apply_freeze(model, ["decoder.*"])
    with pytest.raises(ValueError, match="needs init_from"):
        apply_freeze(model, ["pretrained"])
    with pytest.raises(ValueError, match="nothing would train"):
        apply_freeze(model, ["*"])
    assert apply_freeze(model, ["backbone.layers.0.*"]) > 0
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("backbone.layers.0."))


def test_conditions_missing_from_the_data_are_refused():
    from crystalforge.generative.joint_config import resolve_joint_config

    stats = compute_dataset_stats(_two_phases(8))
    resolved = resolve_joint_config(ModelConfig(task="csp", properties=("p",)), stats)
    assert resolved.property_moments["p"][1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no such property"):
        resolve_joint_config(ModelConfig(task="csp", properties=("band_gap",)), stats)


def test_categories_need_a_space_group_column():
    from crystalforge.generative.joint_config import resolve_joint_config

    stats = compute_dataset_stats(_two_phases(8))
    with pytest.raises(ValueError, match="no space-group column"):
        resolve_joint_config(ModelConfig(task="csp", categories=("crystal_system",)), stats)
    labelled = [c.replace(properties={"spacegroup.number": 221.0}) for c in _two_phases(8)]
    resolved = resolve_joint_config(ModelConfig(task="csp", categories=("space_group",)),
                                    compute_dataset_stats(labelled))  # fmt: skip
    assert resolved.categories == ("space_group",)
