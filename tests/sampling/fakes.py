"""Stand-ins shared by the steering tests."""

from __future__ import annotations

import torch

from crystalforge.core.batch import CrystalBatch


class VolumePredictor:
    """A differentiable stand-in predictor: 'vpa' = volume per atom (Å³), std 1."""

    properties = ("vpa",)
    time_conditioned = False

    def __call__(self, batch: CrystalBatch, t=None, type_weights=None):
        vpa = torch.linalg.det(batch.lattice).abs() / batch.num_atoms.to(batch.lattice.dtype)
        return vpa[:, None], torch.ones_like(vpa)[:, None]
