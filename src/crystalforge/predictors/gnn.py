"""``PropertyGNN``: a CGCNN-style periodic graph network for per-crystal properties, with a variance head.

Why this family: on a CPU the cost of a property surrogate is its graph, and a radius graph with
one gated convolution per layer (Xie & Grossman 2018, CGCNN) costs a few edge MLPs per layer,
where ALIGNN's line graph multiplies the edge count by the mean degree and triples the cost. The
published gap (0.039 vs 0.022 eV/atom on MP formation energies) is smaller than what the reduced
training sets here cost, so the cheap model is trained as an ensemble instead
(``predictors.ensemble``), which buys the uncertainty the issue asks for.

Design, all differentiable in ``frac_coords`` and ``lattice`` (predictor guidance needs it):

- Edges: every periodic neighbour within ``cutoff`` Å (``core.neighbors.radius_graph``, found
  without gradients); their vectors are recomputed from the state with autograd.
- Edge features: Gaussian radial basis × a cosine envelope that reaches 0 at the cutoff, so the
  prediction is continuous as atoms cross it; messages are summed and scaled by a constant
  (no per-atom mean, which would jump when a neighbour enters).
- Atom features: a learned embedding of Z plus a projection of fixed element descriptors (period,
  group, electronegativity, radius, mass, metal); ``MASK_Z`` has its own embedding and zero
  descriptors, so noisy de novo states with unrevealed types are accepted.
- Optional time conditioning (``time_dim > 0``): the noise-aware variant reads the generator's
  time ``t`` (0 = prior, 1 = data) through a sinusoidal embedding added at every layer.
- Readout: mean over atoms (the targets are intensive), then an MLP to a mean and a log-variance
  per property, in standardised units (``target_mean``/``target_std`` buffers undo it).

Invariant to atom permutation, rotation and periodic translation by construction (distances
only); tested with ``crystalforge.testing``'s assertions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import MAX_Z, element_table
from crystalforge.core.neighbors import radius_graph, searchable
from crystalforge.core.segment import segment_mean, segment_sum
from crystalforge.nn.embeddings import sinusoidal_embedding

__all__ = ["PropertyGNN", "PropertyGNNConfig", "element_descriptors"]

MIN_LOG_VAR = -12.0
MAX_LOG_VAR = 6.0
_PERIOD_ENDS = (2, 10, 18, 36, 54, 86, 118)


@dataclass(frozen=True)
class PropertyGNNConfig:
    """Architecture of one ``PropertyGNN`` (plain data, stored in checkpoints).

    Args:
        properties: the predicted property names (one output head each).
        hidden: width of atom states and messages.
        layers: number of gated convolutions.
        cutoff: neighbour radius in Å.
        radial: number of Gaussian radial basis functions on [0, cutoff].
        neighbor_scale: messages are summed and divided by this (a typical neighbour count).
        time_dim: width of the time embedding; 0 for a clean-structure predictor.

    """

    properties: tuple[str, ...] = ("formation_energy_per_atom",)
    hidden: int = 64
    layers: int = 3
    cutoff: float = 5.0
    radial: int = 32
    neighbor_scale: float = 20.0
    time_dim: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "properties", tuple(self.properties))
        if not self.properties:
            raise ValueError("PropertyGNNConfig: give at least one property")
        if self.hidden < 1 or self.layers < 1 or self.radial < 2:
            raise ValueError("PropertyGNNConfig: hidden, layers must be >= 1 and radial >= 2")
        if not self.cutoff > 0:
            raise ValueError(f"PropertyGNNConfig: cutoff must be positive, got {self.cutoff}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists instead of tuples)."""
        out = asdict(self)
        out["properties"] = list(self.properties)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PropertyGNNConfig:
        """Inverse of ``to_dict``; unknown keys are refused by name."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PropertyGNNConfig: unknown key(s) {unknown}")
        return cls(**{**data, "properties": tuple(data.get("properties", ()))})


def _period_and_group(z: int) -> tuple[int, int]:
    """Period (1–7) and IUPAC group (1–18; 3 for lanthanides and actinides) of element ``z``."""
    period = next(p for p, end in enumerate(_PERIOD_ENDS, start=1) if z <= end)
    start = 0 if period == 1 else _PERIOD_ENDS[period - 2]
    k = z - start  # position within the period, 1-based
    if period == 1:
        return period, 1 if k == 1 else 18
    if period <= 3:
        return period, k if k <= 2 else k + 10
    if period <= 5:
        return period, k
    if k <= 2:
        return period, k
    if k <= 17:  # La–Lu / Ac–Lr
        return period, 3
    return period, k - 14


def element_descriptors() -> np.ndarray:
    """Fixed per-element features ``[MAX_Z + 1, 31]``: period and group one-hot, scaled scalars, flags.

    Row 0 (``MASK_Z``) is all zeros. Missing values (electronegativity of noble gases, ...) are 0
    with a flag column set.
    """
    table = element_table()
    out = np.zeros((MAX_Z + 1, 7 + 18 + 6), dtype=np.float64)
    for z in range(1, MAX_Z + 1):
        period, group = _period_and_group(z)
        out[z, period - 1] = 1.0
        out[z, 7 + group - 1] = 1.0
        chi, radius = table.electronegativity[z], table.atomic_radius[z]
        out[z, 25] = 0.0 if math.isnan(chi) else (chi - 1.8) / 0.7
        out[z, 26] = 1.0 if math.isnan(chi) else 0.0
        out[z, 27] = 0.0 if math.isnan(radius) else (radius - 1.4) / 0.5
        out[z, 28] = 1.0 if math.isnan(radius) else 0.0
        out[z, 29] = math.log(table.masses[z]) - 4.0
        out[z, 30] = float(table.is_metal[z])
    return out


class _GatedConv(nn.Module):
    """One CGCNN convolution: ``h_i += LN(Σ_j σ(W_g z_ij) ⊙ softplus(W_c z_ij) · env(d_ij)) / scale``."""

    def __init__(self, hidden: int, radial: int, time_dim: int, scale: float) -> None:
        super().__init__()
        # W [h_i, h_j, rbf] split into per-atom products gathered onto edges: one radial matmul per edge
        self.centre = nn.Linear(hidden, 2 * hidden)
        self.neighbour = nn.Linear(hidden, 2 * hidden, bias=False)
        self.radial = nn.Linear(radial, 2 * hidden, bias=False)
        self.norm = nn.LayerNorm(hidden)
        self.update = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.time = nn.Linear(time_dim, hidden) if time_dim else None
        self.scale = scale

    def forward(
        self, h: Tensor, src: Tensor, dst: Tensor, rbf: Tensor, envelope: Tensor, t_emb: Tensor | None
    ) -> Tensor:
        if self.time is not None and t_emb is not None:
            h = h + self.time(t_emb)
        pre = self.centre(h)[src] + self.neighbour(h)[dst] + self.radial(rbf)
        gate, core = pre.chunk(2, dim=1)
        message = torch.sigmoid(gate) * nn.functional.softplus(core) * envelope[:, None]
        agg = segment_sum(message, src, h.shape[0]) / self.scale
        out: Tensor = h + self.update(self.norm(agg))
        return out


class PropertyGNN(nn.Module):
    """Periodic radius-graph network: ``forward(batch, t) -> (mean, log_var)`` in standardised units."""

    descriptors: Tensor
    centres: Tensor
    target_mean: Tensor
    target_std: Tensor

    def __init__(self, config: PropertyGNNConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.type_embedding = nn.Embedding(MAX_Z + 1, h)
        self.register_buffer("descriptors", torch.from_numpy(element_descriptors()).float(), persistent=False)
        self.descriptor_projection = nn.Linear(self.descriptors.shape[1], h)
        self.register_buffer("centres", torch.linspace(0.0, config.cutoff, config.radial))
        self.width = config.cutoff / (config.radial - 1)
        self.convs = nn.ModuleList(
            _GatedConv(h, config.radial, config.time_dim, config.neighbor_scale) for _ in range(config.layers)
        )
        p = len(config.properties)
        self.head = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 2 * p))
        self.register_buffer("target_mean", torch.zeros(p))
        self.register_buffer("target_std", torch.ones(p))

    @property
    def properties(self) -> tuple[str, ...]:
        """Names of the predicted properties, in output order."""
        return self.config.properties

    @property
    def time_conditioned(self) -> bool:
        """Whether the network reads the generator's time (the noise-aware variant)."""
        return self.config.time_dim > 0

    def set_normalisation(self, mean: Tensor, std: Tensor) -> None:
        """Targets are standardised with these per-property statistics."""
        self.target_mean.copy_(mean.to(self.target_mean))
        self.target_std.copy_(std.to(self.target_std).clamp(min=1e-8))

    def edges(self, batch: CrystalBatch) -> tuple[Tensor, Tensor, Tensor]:
        """``(src, dst, distance)`` of the radius graph, distances differentiable in the state."""
        with torch.no_grad():
            graph = radius_graph(batch.replace(frac_coords=batch.frac_coords.detach(), lattice=batch.lattice.detach()),
                                 self.config.cutoff)  # fmt: skip
        src, dst = graph.edge_index
        shift = graph.cell_shift.to(batch.frac_coords.dtype)
        lattice = batch.lattice[batch.crystal_idx[src]]
        frac = batch.frac_coords[dst] + shift - batch.frac_coords[src]
        vectors = torch.einsum("ek,ekl->el", frac, lattice)
        distance = torch.sqrt((vectors * vectors).sum(dim=1) + 1e-12)
        return src, dst, distance

    def forward(
        self, batch: CrystalBatch, t: Tensor | None = None, *, type_weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Standardised ``mean [B, P]`` and ``log_var [B, P]``; ``t [B]`` is required iff time-conditioned.

        ``type_weights [N, MAX_Z + 1]``: soft atom types (rows of weights over Z) used instead of
        ``batch.atomic_numbers``; with the one-hot of the types it gives the same prediction and
        its gradient says which element would raise a property (type-aware guidance). A crystal
        whose cell is too thin for the neighbour search (``core.neighbors.searchable``: a near-flat
        generated cell) gets NaN, without a gradient; the others are predicted as usual.
        """
        if self.time_conditioned and t is None:
            raise ValueError("this predictor is noise-aware: pass the generator's time t [B]")
        ok = searchable(batch, self.config.cutoff)
        if not bool(ok.all()):
            idx = torch.nonzero(ok).flatten()
            p = len(self.config.properties)
            dtype = self.type_embedding.weight.dtype
            mean = torch.full((batch.num_crystals, p), float("nan"), dtype=dtype, device=batch.device)
            log_var = mean.clone()
            if idx.numel():
                rows = None if type_weights is None else type_weights[ok[batch.crystal_idx]]
                sub_mean, sub_log_var = self._forward(batch.index_select(idx), None if t is None else t[idx], rows)
                mean, log_var = mean.index_put((idx,), sub_mean), log_var.index_put((idx,), sub_log_var)
            return mean, log_var
        return self._forward(batch, t, type_weights)

    def _forward(self, batch: CrystalBatch, t: Tensor | None, type_weights: Tensor | None) -> tuple[Tensor, Tensor]:
        dtype = self.type_embedding.weight.dtype
        z = batch.atomic_numbers
        if type_weights is None:
            h = self.type_embedding(z) + self.descriptor_projection(self.descriptors[z].to(dtype))
        else:
            w = type_weights.to(dtype)
            h = w @ self.type_embedding.weight + self.descriptor_projection(w @ self.descriptors.to(dtype))
        src, dst, distance = self.edges(batch)
        distance = distance.to(dtype)
        rbf = torch.exp(-((distance[:, None] - self.centres) ** 2) / (2 * self.width**2))
        envelope = 0.5 * (torch.cos(math.pi * (distance / self.config.cutoff).clamp(max=1.0)) + 1.0)
        t_emb = None
        if self.time_conditioned and t is not None:
            t_emb = sinusoidal_embedding(t.to(dtype), self.config.time_dim)[batch.crystal_idx]
        for conv in self.convs:
            h = conv(h, src, dst, rbf, envelope, t_emb)
        pooled = segment_mean(h, batch.crystal_idx, batch.num_crystals)
        mean, log_var = self.head(pooled).chunk(2, dim=1)
        return mean, log_var.clamp(MIN_LOG_VAR, MAX_LOG_VAR)

    def predict(
        self, batch: CrystalBatch, t: Tensor | None = None, *, type_weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` ``[B, P]`` in the properties' own units (aleatoric std of this member)."""
        mean, log_var = self(batch, t, type_weights=type_weights)
        return mean * self.target_std + self.target_mean, torch.exp(0.5 * log_var) * self.target_std
