"""Flow-matching processes per field.

``TorusFlow`` (frac coords), ``LatticeFlow`` (lattice code), ``MaskedTypeFlow`` (atom types,
discrete flow matching). The shared helpers, per-field base classes (working representations) and ``FixedField`` live in
``generative.process_base``. The equations, defaults and their sources are in
``docs/models.md`` ("Generative processes per field").
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import TypeVocabulary
from crystalforge.core.segment import segment_count, segment_sum
from crystalforge.generative.interfaces import PathSample
from crystalforge.generative.process_base import (
    _TIME_EPS,
    MASK_CLASS,
    LatticeCodeProcessBase,
    TorusProcessBase,
    TypeProcessBase,
    atom_values,
    crystal_values,
    remove_crystal_mean,
)


# ---- fractional coordinates ----------------------------------------------------------------------
class TorusFlow(TorusProcessBase):
    """Riemannian flow matching of fractional coordinates on the unit flat torus (FlowMM / DiffCSP-style).

    Prior: uniform on [0, 1)³ per atom. Path: the geodesic
    ``x_t = wrap(x_prior + t·u)`` with ``u = logmap(x_prior, x_data) = pbc_diff(x_data, x_prior)``,
    whose velocity ``dx_t/dt = u`` is constant. The backbone predicts that velocity.

    Translations: a crystal translated as a whole is the same crystal, so with ``remove_mean``
    (default) the target is ``u − mean_crystal(u)`` and the prediction is centred the same way in
    the loss and in ``step``: the model is never asked for the global drift, which a
    translation-invariant backbone cannot know (FlowMM removes the mean of the fractional
    velocity for the same reason; DiffCSP instead relies on its invariant score network and keeps
    the raw target).

    Step: Euler on the torus, ``x ← wrap(x + dt·(1 + s·t)·v)``; ``s`` is FlowMM's inference-time
    "anti-annealing" velocity scale (0 = plain Euler).
    """

    predicts_velocity = True

    def __init__(self, *, remove_mean: bool = True, anti_annealing: float = 0.0) -> None:
        self.remove_mean = remove_mean
        self.anti_annealing = anti_annealing

    def sample_path(
        self, x_data: Tensor, t: Tensor, batch: CrystalBatch, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """``x_t`` on the geodesic from a uniform draw to ``x_data [N, 3]``; target the (centred) velocity."""
        x_prior = self.manifold.random_uniform(
            *x_data.shape, generator=generator, dtype=x_data.dtype, device=x_data.device
        )
        u = self.manifold.logmap(x_prior, x_data)
        tt = atom_values(t, batch, dtype=x_data.dtype)[:, None]
        x_t = self.manifold.expmap(x_prior, tt * u)
        return PathSample(x_t=x_t, target=self._centre(u, batch))

    def _centre(self, v: Tensor, batch: CrystalBatch) -> Tensor:
        return remove_crystal_mean(v, batch) if self.remove_mean else v

    def loss(self, prediction: Tensor, path: PathSample, batch: CrystalBatch) -> Tensor:
        """Per-crystal mean over atoms of the mean squared (centred) velocity error over the 3 components ``[B]``."""
        return super().loss(self._centre(prediction, batch), path, batch)

    def step(
        self,
        x_t: Tensor,
        prediction: Tensor,
        t: Tensor,
        dt: Tensor | float,
        batch: CrystalBatch,
        *,
        anti_annealing: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Euler step ``wrap(x + dt·(1 + s·t)·v)`` with ``v`` the (centred) predicted velocity."""
        s = self.anti_annealing if anti_annealing is None else anti_annealing
        tt = atom_values(t, batch, dtype=x_t.dtype)[:, None]
        dtt = atom_values(dt, batch, dtype=x_t.dtype)[:, None]
        v = self._centre(prediction, batch)
        return self.manifold.expmap(x_t, dtt * (1.0 + s * tt) * v)


# ---- lattice -------------------------------------------------------------------------------------
class LatticeFlow(LatticeCodeProcessBase):
    """Euclidean flow matching on the standardised 6-d lattice code.

    Prior ``N(0, I)`` in standardised space, i.e. ``N(mean, diag(std²))`` over codes (from
    ``DatasetStats``). Linear path ``x_t = (1 − t)·x_prior + t·x_data``, target velocity
    ``x_data − x_prior``; Euler step ``x + dt·(1 + s·t)·v`` with optional anti-annealing ``s``.
    """

    predicts_velocity = True

    def __init__(
        self, stats: DatasetStats | None = None, *, min_std: float = 1e-3, anti_annealing: float = 0.0
    ) -> None:
        super().__init__(stats, min_std)
        self.anti_annealing = anti_annealing

    def sample_path(
        self, x_data: Tensor, t: Tensor, batch: CrystalBatch, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """``x_t`` on the straight line from a standard-normal draw to ``x_data [B, 6]``."""
        x_prior = torch.randn(x_data.shape, generator=generator, dtype=x_data.dtype, device=x_data.device)
        tt = crystal_values(t, batch, dtype=x_data.dtype)[:, None]
        return PathSample(x_t=(1.0 - tt) * x_prior + tt * x_data, target=x_data - x_prior)

    def step(
        self,
        x_t: Tensor,
        prediction: Tensor,
        t: Tensor,
        dt: Tensor | float,
        batch: CrystalBatch,
        *,
        anti_annealing: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Euler step ``x + dt·(1 + s·t)·v``."""
        s = self.anti_annealing if anti_annealing is None else anti_annealing
        tt = crystal_values(t, batch, dtype=x_t.dtype)[:, None]
        dtt = crystal_values(dt, batch, dtype=x_t.dtype)[:, None]
        return x_t + dtt * (1.0 + s * tt) * prediction


# ---- atom types ----------------------------------------------------------------------------------
class MaskedTypeFlow(TypeProcessBase):
    """Discrete flow matching of atom types with a masking (absorbing) source (Campbell et al. 2024; Gat et al. 2024).

    Path: each atom is revealed with probability ``κ(t) = t`` (``x_t = x_data``), otherwise it is
    masked. The backbone predicts logits ``[N, K]`` of the clean type (the mask logit is ignored).

    Loss, ``weighting="none"`` (default, as Multiflow trains): cross-entropy averaged over the
    crystal's masked atoms (0 for a crystal with none masked). ``weighting="elbo"``: per masked
    atom ``κ'(t)/(1 − κ(t)) = 1/(1 − t)`` times the cross-entropy, averaged over all the
    crystal's atoms, the continuous-time ELBO (equal in expectation to the plain per-atom CE);
    ``1 − t`` is floored at ``min_time`` to bound the weight.

    Step ``t → t + dt``: each still-masked atom is revealed with probability
    ``κ'(t)·dt/(1 − κ(t)) = dt/(1 − t)`` (1 on the last step) with a class drawn from
    ``softmax(logits / temperature)`` over real elements; revealed atoms stay. At ``t + dt = 1``
    no mask remains.
    """

    def __init__(
        self,
        vocab: TypeVocabulary,
        *,
        weighting: Literal["none", "elbo"] = "none",
        temperature: float = 1.0,
        min_time: float = 1e-3,
    ) -> None:
        if weighting not in ("none", "elbo"):
            raise ValueError(f"weighting must be 'none' or 'elbo', got {weighting!r}")
        super().__init__(vocab, temperature)
        self.weighting = weighting
        self.min_time = min_time

    def sample_path(
        self, x_data: Tensor, t: Tensor, batch: CrystalBatch, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """Mask each atom of ``x_data [N]`` with probability ``1 − t``; ``weight`` is the per-atom loss weight."""
        dtype = batch.frac_coords.dtype
        tt = atom_values(t, batch, dtype=dtype)
        elbo = self.weighting == "elbo"
        weight = 1.0 / (1.0 - tt).clamp(min=self.min_time) if elbo else torch.ones_like(tt)
        return self._masked_path(x_data, tt, weight, generator)

    def loss(self, prediction: Tensor, path: PathSample, batch: CrystalBatch) -> Tensor:
        """Per-crystal (weighted) cross-entropy on masked atoms ``[B]`` (see the class docstring)."""
        total = self._weighted_cross_entropy(prediction, path, batch)
        if self.weighting == "elbo":
            count = segment_count(batch.crystal_idx, batch.num_crystals).to(total.dtype)
        else:
            count = segment_sum((path.x_t == MASK_CLASS).to(total.dtype), batch.crystal_idx, batch.num_crystals)
        return total / count.clamp(min=1.0)

    def step(
        self,
        x_t: Tensor,
        prediction: Tensor,
        t: Tensor,
        dt: Tensor | float,
        batch: CrystalBatch,
        *,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Reveal masked atoms with probability ``dt/(1 − t)`` from the predicted distribution."""
        tt = atom_values(t, batch, dtype=torch.float64)
        dtt = atom_values(dt, batch, dtype=torch.float64)
        remaining = 1.0 - tt
        prob = torch.where(dtt >= remaining - _TIME_EPS, torch.ones_like(tt), dtt / remaining.clamp(min=_TIME_EPS))
        return self._reveal(x_t, prediction, prob, temperature, generator)
