"""The networks of the CDVAE family: encoder, decoder conditioning, latent heads, composition helpers.

- ``CrystalEncoder``: the flagship's periodic message-passing backbone (``nn.backbones.PeriodicMP``)
  run on the clean crystal, with its crystal-level readout (per-crystal mean of atom features and
  the crystal context, which carries the lattice shape) resized from the 6 lattice-code outputs to
  ``2·latent_dim``: ``μ`` and ``log σ²``. PeriodicMP sees only fractional displacements through
  periodic Fourier features and the Gram matrix of the lattice, so ``μ`` is invariant to atom
  permutation, rotation and periodic translation by construction (tested).
- ``LatentConditioner``: what the decoder backbone adds to its crystal context. It is a
  ``nn.conditioning.Conditioner`` (so Con-CDVAE's property embedding, its learned "unconditioned"
  vectors and ``condition_mask`` handling are the flagship's) plus an MLP of ``z``, read from
  ``state.properties[LATENT_KEY]``. The output layer is linear, so ``out(e(props) + g(z))`` is a
  linear map of the concatenation ``[g(z), e(props)]``: "property embedding concatenated to z".
- ``LatentHeads``: number of atoms (a classifier over 1..max_atoms), composition (softmax over the
  element vocabulary) and the standardised lattice code (given the composition as well, so CSP gets
  a lattice that fits the given formula).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import MASK_Z, TypeVocabulary
from crystalforge.core.lattice import LATTICE_CODE_DIM
from crystalforge.core.segment import segment_sum
from crystalforge.generative.joint_config import BackboneConfig
from crystalforge.nn.backbones import PeriodicMP, PeriodicMPConfig
from crystalforge.nn.conditioning import Conditioner
from crystalforge.nn.embeddings import deep_mlp, mlp

__all__ = [
    "LATENT_KEY", "CrystalEncoder", "LatentConditioner", "LatentHeads", "composition_fractions", "crystal_name",
    "gaussian_kl", "reparameterise", "round_composition",
]  # fmt: skip

LATENT_KEY = "cdvae.latent"
"""Key of ``z [B, latent_dim]`` in ``state.properties`` while the decoder runs (removed from outputs)."""

MIN_LOG_VAR, MAX_LOG_VAR = -10.0, 4.0


def backbone_config(
    config: BackboneConfig, elements: Sequence[int], *, coords: bool = True, types: bool = True, lattice: bool = True
) -> PeriodicMPConfig:
    """The ``PeriodicMPConfig`` of a ``BackboneConfig`` with the chosen heads (only ``periodic_mp`` exists)."""
    if config.name != "periodic_mp":
        raise ValueError(f"the cdvae family builds on the periodic_mp backbone, got backbone name {config.name!r}")
    return PeriodicMPConfig(
        hidden=config.hidden,
        layers=config.layers,
        fourier_frequencies=config.fourier_frequencies,
        time_dim=config.time_dim,
        elements=tuple(elements),
        self_loops=config.self_loops,
        output_coords=coords,
        output_types=types,
        output_lattice=lattice,
    )


class CrystalEncoder(nn.Module):
    """``batch → (μ [B, d], log σ² [B, d])`` of the clean crystal (see the module docstring)."""

    def __init__(self, config: BackboneConfig, elements: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        trunk_config = backbone_config(config, elements, coords=False, types=False)
        self.trunk = PeriodicMP(trunk_config)
        self.trunk.lattice_head = mlp(2 * config.hidden, config.hidden, 2 * latent_dim)

    def forward(self, batch: CrystalBatch) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance (clamped to [−10, 4])."""
        t = torch.ones(batch.num_crystals, dtype=batch.frac_coords.dtype, device=batch.device)
        readout = self.trunk(batch, t).lattice  # [B, 2d]
        mu, log_var = readout.chunk(2, dim=-1)
        return mu, log_var.clamp(MIN_LOG_VAR, MAX_LOG_VAR)


def reparameterise(mu: Tensor, log_var: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """``z = μ + exp(log σ²/2)·ε``, ``ε ~ N(0, I)``: a posterior draw differentiable in ``μ`` and ``log σ²``."""
    noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * log_var) * noise


def gaussian_kl(mu: Tensor, log_var: Tensor) -> Tensor:
    """``KL(N(μ, σ²) ‖ N(0, I))`` per row ``[B]``: ``½ Σ (μ² + σ² − 1 − log σ²)``."""
    return 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)


class LatentConditioner(Conditioner):
    """The decoder's crystal context: ``out(Σ property embeddings + MLP(z))`` (see the module docstring)."""

    def __init__(
        self, latent_dim: int, properties: Sequence[str], moments: Mapping[str, Sequence[float]], dim: int
    ) -> None:
        super().__init__(properties, moments, (), dim)
        self.latent = mlp(latent_dim, dim, dim)
        self.out.reset_parameters()  # trained from scratch with the decoder: no zero start needed

    def forward(self, state: CrystalBatch) -> Tensor:
        """Context ``[B, dim]``; raises ``ValueError`` when the state carries no latent."""
        z = state.properties.get(LATENT_KEY)
        if z is None:
            raise ValueError(f"the cdvae decoder needs the latent z in state.properties[{LATENT_KEY!r}]")
        props: Tensor = super().forward(state)  # out(Σ property terms)
        latent: Tensor = self.latent(z.to(self.out.weight.dtype))
        return props + latent @ self.out.weight.T


class LatentHeads(nn.Module):
    """Number of atoms, composition and lattice code from the conditioning vector ``c = [z, e(props)]``."""

    def __init__(self, cond_dim: int, hidden: int, max_atoms: int, num_elements: int) -> None:
        super().__init__()
        if max_atoms < 1 or num_elements < 1:
            raise ValueError(f"max_atoms and the element count must be >= 1, got {max_atoms}, {num_elements}")
        self.max_atoms = max_atoms
        self.num_atoms = deep_mlp(cond_dim, hidden, max_atoms)
        self.composition = deep_mlp(cond_dim, hidden, num_elements)
        self.lattice = deep_mlp(cond_dim + num_elements + 1, hidden, LATTICE_CODE_DIM)

    def num_atoms_logits(self, c: Tensor) -> Tensor:
        """Logits ``[B, max_atoms]``: class ``k`` is ``k + 1`` atoms."""
        out: Tensor = self.num_atoms(c)
        return out

    def composition_logits(self, c: Tensor) -> Tensor:
        """Logits ``[B, K]`` over the vocabulary's elements (no mask class)."""
        out: Tensor = self.composition(c)
        return out

    def lattice_code(self, c: Tensor, fractions: Tensor, num_atoms: Tensor) -> Tensor:
        """Standardised lattice code ``[B, 6]`` given the composition ``fractions [B, K]`` and ``num_atoms [B]``."""
        size = num_atoms.to(c.dtype).log()[:, None]
        out: Tensor = self.lattice(torch.cat([c, fractions.to(c.dtype), size], dim=-1))
        return out


def typed_atoms(batch: CrystalBatch) -> Tensor:
    """Atoms per crystal ``[B]`` whose type is given (not ``MASK_Z``): ``num_atoms`` for a CSP crystal, 0 for DNG."""
    return segment_sum((batch.atomic_numbers != MASK_Z).to(torch.int64), batch.crystal_idx, batch.num_crystals)


def crystal_name(batch: CrystalBatch, i: int) -> str:
    """How errors name crystal ``i`` of ``batch``: its material id, else ``"crystal i"``."""
    return str(batch.material_ids[i]) if batch.material_ids else f"crystal {i}"


def composition_fractions(batch: CrystalBatch, vocab: TypeVocabulary) -> Tensor:
    """Element fractions ``[B, K]`` of each crystal over the vocabulary's elements.

    Raises:
        ValueError: naming the crystal, for a masked atom or an element outside the vocabulary.

    """
    lookup = torch.as_tensor(vocab.class_of_z(), device=batch.device)
    classes = lookup[batch.atomic_numbers] - 1  # class 0 is the mask
    bad = classes < 0
    if bool(bad.any()):
        atom = int(torch.nonzero(bad)[0])
        name = crystal_name(batch, int(batch.crystal_idx[atom]))
        z = int(batch.atomic_numbers[atom])
        what = "a masked atom (MASK_Z)" if z == MASK_Z else f"element Z={z}, outside the model's vocabulary"
        raise ValueError(f"{name}: has {what}; the cdvae family needs every atom's type here")
    k = len(vocab.atomic_numbers)
    counts = torch.zeros(batch.num_crystals, k, dtype=batch.frac_coords.dtype, device=batch.device)
    ones = torch.ones_like(classes, dtype=counts.dtype)
    counts.index_put_((batch.crystal_idx, classes), ones, accumulate=True)
    return counts / batch.num_atoms.to(counts.dtype)[:, None]


def round_composition(probs: Tensor, num_atoms: Tensor) -> Tensor:
    """Integer element counts ``[B, K]`` summing to ``num_atoms [B]``, nearest to ``num_atoms · probs``.

    Largest remainders: every count is ``floor(n·p)``, and the ``n − Σ floor`` atoms left go to the
    elements with the largest fractional parts. An element with ``p = 0`` never gets an atom.
    """
    raw = probs.to(torch.float64) * num_atoms.to(torch.float64)[:, None]
    base = torch.floor(raw)
    left = num_atoms.to(torch.float64) - base.sum(dim=1)  # [B], in 0..K-1
    rank = torch.argsort(torch.argsort(-(raw - base), dim=1, stable=True), dim=1)
    return (base + (rank < left[:, None]).to(base.dtype)).to(torch.int64)
