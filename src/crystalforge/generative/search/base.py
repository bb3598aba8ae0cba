"""What the search baselines share: the memory, the one trained scalar, the plan checks, the last step.

A search model is a ``GenerativeModel`` whose "training" is remembering (``memory.CrystalMemory``,
filled from ``loss``) plus one real parameter fitted by the loss: ``log_volume_ratio`` θ, the mean
over the training cells of ``ln(V / V_ref)``, where ``V_ref = Σ_atoms v(Z)`` sums a per-element
reference volume table the family chooses. The loss ``(θ − ln(V/V_ref))²`` has the data mean as its
minimum, so a few optimiser steps fit it (as for ``tests/architecture``'s toy family).

Sampling is one step: ``SamplerConfig`` settings (steps, Heun, corrector) do not apply and are not
read; the default sampler has ``steps=1``. Guidance wraps a denoiser's prediction, which these models
do not have, and anti-annealing scales flow velocities, which they do not have either: both are
refused with an error naming the family (never ignored). Constraints are applied once to the final
state at ``t = 1`` with a context whose ``noise`` is the identity (the state is already clean), so
inpainting constraints write their exact known values.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.periodic import wrap_frac
from crystalforge.core.segment import segment_sum
from crystalforge.generative.interfaces import SamplePlan, SamplerConfig, SampleStep, StepContext
from crystalforge.generative.search.memory import CrystalMemory

__all__ = ["SearchModel", "assemble", "crystal_rows"]


class SearchModel(nn.Module):
    """Base of the search families: memory + ``log_volume_ratio`` + one-step sampling plumbing.

    Args:
        family: the registry name (used in error messages).
        memory: the training structures kept.
        reference_volume: ``[119]`` Å³ per element (index 0 unused), defining ``V_ref``.

    """

    conditions: tuple[str, ...] = ()

    def __init__(self, family: str, memory: CrystalMemory, reference_volume: np.ndarray) -> None:
        super().__init__()
        self.family = family
        self.memory = memory
        self.log_volume_ratio = nn.Parameter(torch.zeros(()))
        self.reference_volume: Tensor
        table = torch.as_tensor(np.asarray(reference_volume, dtype=np.float64))
        self.register_buffer("reference_volume", table, persistent=False)  # derived data: never checkpointed

    # ---- training -------------------------------------------------------------------------------
    def loss(self, batch: CrystalBatch) -> dict[str, Tensor]:
        """Remember the batch (training mode only) and fit θ: ``{"loss", "log_volume_ratio"}``."""
        if self.training:
            self.memory.observe(batch)
        dtype = batch.frac_coords.dtype
        per_atom = self.reference_volume.to(batch.device, dtype)[batch.atomic_numbers]
        target = torch.log(batch.volume / segment_sum(per_atom, batch.crystal_idx, batch.num_crystals))
        loss = (self.log_volume_ratio.to(dtype) - target).pow(2).mean()
        return {"loss": loss, "log_volume_ratio": self.log_volume_ratio.detach()}

    def reference(self, atomic_numbers: np.ndarray) -> float:
        """``V_ref`` in Å³ of a set of atoms (atomic numbers ``[n]``)."""
        table = self.reference_volume.cpu().numpy()
        return float(table[np.asarray(atomic_numbers, dtype=np.int64)].sum())

    def target_volume(self, atomic_numbers: np.ndarray) -> float:
        """The learned volume ``V_ref · exp(θ)`` of a cell holding these atoms."""
        return self.reference(atomic_numbers) * float(torch.exp(self.log_volume_ratio.detach()))

    # ---- sampling ------------------------------------------------------------------------------
    def default_sampler(self) -> SamplerConfig:
        """One step (the settings of an integrator do not apply)."""
        return SamplerConfig(steps=1)

    def check_plan(self, plan: SamplePlan) -> None:
        """Refuse what the plan asks that this family cannot do (``ValueError`` naming the family)."""
        if plan.guidance:
            names = ", ".join(type(g).__name__ for g in plan.guidance)
            raise ValueError(
                f"the {self.family} family cannot use guidance ({names}): it has no denoiser prediction to steer; "
                "use constraints, a composition, or a learned family"
            )
        if plan.sampler.anti_annealing is not None:
            raise ValueError(f"anti_annealing: the {self.family} family has no flow (velocity) fields to scale")
        if plan.sampler.start_time > 0.0:
            raise ValueError(f"start_time: the {self.family} family does not integrate in time, so it cannot refine")

    def finish(
        self, state: CrystalBatch, template: CrystalBatch, plan: SamplePlan, generator: torch.Generator | None
    ) -> Iterator[SampleStep]:
        """Apply the plan's constraints once at ``t = 1`` and yield the one step."""
        if plan.constraints and state.atomic_numbers.shape != template.atomic_numbers.shape:
            raise ValueError(
                f"the {self.family} family changed some crystals' atom counts (no remembered structure of that "
                "size), so constraints on the template's atoms cannot apply; ask for sizes seen in training"
            )
        context = StepContext(template=template, noise=lambda clean, t: clean, generator=generator)
        t = torch.ones(state.num_crystals, dtype=state.frac_coords.dtype, device=state.device)
        for constraint in plan.constraints:
            state = constraint.apply(state, t, context)
        yield SampleStep(index=0, t=1.0, state=state)


def crystal_rows(template: CrystalBatch) -> list[np.ndarray]:
    """Each template crystal's atomic numbers as a NumPy array (``MASK_Z`` where generated)."""
    z = template.atomic_numbers.cpu().numpy().astype(np.int64)
    bounds = np.cumsum([0, *template.num_atoms.tolist()])
    return [z[bounds[i] : bounds[i + 1]] for i in range(template.num_crystals)]


def assemble(template: CrystalBatch, crystals: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> CrystalBatch:
    """The template with each crystal replaced by ``(atomic_numbers [n], frac_coords [n, 3], lattice [3, 3])``."""
    dtype, device = template.frac_coords.dtype, template.device
    z = np.concatenate([c[0] for c in crystals]).astype(np.int64)
    frac = np.concatenate([c[1] for c in crystals]).reshape(-1, 3)
    lattice = np.stack([c[2] for c in crystals])
    num_atoms = torch.tensor([len(c[0]) for c in crystals], dtype=torch.int64, device=device)
    same = bool(torch.equal(num_atoms, template.num_atoms.to(device)))
    return template.replace(
        atomic_numbers=torch.from_numpy(z).to(device),
        frac_coords=wrap_frac(torch.from_numpy(frac).to(device, dtype)),
        lattice=torch.from_numpy(lattice).to(device, dtype),
        num_atoms=num_atoms,
        fixed=template.fixed if same else None,
        latents={},
    )
