"""``PeriodicMP``: message passing over the fully connected in-cell graph (DiffCSP's CSPNet idea).

Every ordered pair (i, j) of atoms in the same crystal is an edge (plus i = i self loops by
default). A pair sees only frame-free, periodic quantities:

- Fourier features of the fractional displacement ``Δf = pbc_diff(f_j, f_i)``:
  ``sin/cos(2πkΔf_c)``, k = 1..K (periodic, so invariant to periodic translation and to integer
  image shifts of any atom);
- the crystal's lattice shape ``L Lᵀ / V^(2/3)``, ``log(V/n)``, ``log n`` (rotation invariant);
- the crystal context: time embedding + property conditioning (``condition_mask`` aware).

One layer (pre-LayerNorm, residual)::

    x   = LN(h)
    m_ij = φ_e(A x_i + B x_j + C fourier_ij + D ctx_b)          # [E, H], φ_e = SiLU∘Linear∘SiLU
    h_i += φ_n([x_i, mean_j m_ij])                                # [N, H]

``A x``/``B x`` are computed per atom and gathered per edge, and the Fourier features once per
call, so an edge costs one ``H×H`` matmul per layer. Heads (each can be switched off):

- ``frac_coords [N, 3]``: ``mean_j Σ_k (a_ijck cos 2πkΔf_c − b_ijck sin 2πkΔf_c) + W h_i`` — the
  coefficients come from a readout edge MLP, the directions are the derivatives of the Fourier
  features (the gradient of a learned periodic pair potential), so the output is smooth and
  periodic in every ``Δf``;
- ``atomic_numbers [N, K]``: logits over the ``TypeVocabulary`` (class 0 = mask);
- ``lattice [B, 6]``: MLP of the per-crystal mean of atom features and the crystal context.

All outputs live in fractional / lattice-code space, so all are rotation invariant; per-atom
outputs are permutation equivariant. The Gram features depend on the choice of unit cell, so the
network is not invariant to ``L' = M L`` (``M`` unimodular).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import MAX_Z, TypeVocabulary
from crystalforge.core.segment import segment_mean
from crystalforge.nn.conditioning import Conditioner
from crystalforge.nn.embeddings import (
    NUM_LATTICE_FEATURES,
    TimeEmbedding,
    TypeEmbedding,
    frac_fourier_basis,
    lattice_shape_features,
    mlp,
)
from crystalforge.nn.outputs import FieldOutputs
from crystalforge.representations.graph import in_cell_graph

__all__ = ["PeriodicMP", "PeriodicMPConfig"]

DEFAULT_ELEMENTS = tuple(range(1, 101))
"""Z = 1..100, the vocabulary of the CDVAE/DiffCSP models (``TypeVocabulary.all_elements(100)``)."""


@dataclass(frozen=True)
class PeriodicMPConfig:
    """Sizes and switches of ``PeriodicMP`` (plain data, stored in checkpoints).

    Attributes:
        hidden: width H of atom and edge features.
        layers: number of message-passing layers.
        fourier_frequencies: K, frequencies of the ``Δf`` Fourier features (feature width 6K).
        time_dim: width of the sinusoidal time features before their MLP.
        elements: atomic numbers of the type vocabulary (sorted, without ``MASK_Z``); class 0 is
            the mask, so ``num_types = len(elements) + 1``.
        properties: continuous properties to condition on (read from ``state.properties`` with
            ``state.condition_mask``; see ``nn.conditioning``).
        property_moments: ``{name: (mean, std)}`` of each continuous property in the training data.
        categories: categorical conditions (``space_group``, ``crystal_system``).
        output_coords / output_types / output_lattice: which heads exist; a switched-off head
            gives ``None`` in ``FieldOutputs``.
        self_loops: include the i = i pair (``Δf = 0``) in each atom's aggregation (DiffCSP does).

    """

    hidden: int = 256
    layers: int = 4
    fourier_frequencies: int = 10
    time_dim: int = 64
    elements: tuple[int, ...] = DEFAULT_ELEMENTS
    properties: tuple[str, ...] = ()
    property_moments: dict[str, tuple[float, float]] = field(default_factory=dict)
    categories: tuple[str, ...] = ()
    output_coords: bool = True
    output_types: bool = True
    output_lattice: bool = True
    self_loops: bool = True

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "fourier_frequencies", "time_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PeriodicMPConfig.{name} must be >= 1, got {getattr(self, name)}")
        elements = tuple(int(z) for z in self.elements)
        if not elements or list(elements) != sorted(set(elements)) or elements[0] < 1 or elements[-1] > MAX_Z:
            raise ValueError(f"PeriodicMPConfig.elements must be distinct, increasing atomic numbers in 1..{MAX_Z}")
        object.__setattr__(self, "elements", elements)
        object.__setattr__(self, "properties", tuple(str(p) for p in self.properties))
        object.__setattr__(self, "categories", tuple(str(c) for c in self.categories))
        names = self.properties + self.categories
        if len(set(names)) != len(names):
            raise ValueError(f"PeriodicMPConfig conditions have duplicates: {names}")

    @property
    def vocabulary(self) -> TypeVocabulary:
        """The type vocabulary (class 0 = ``MASK_Z``)."""
        return TypeVocabulary(self.elements)

    @property
    def num_types(self) -> int:
        """K, the number of type classes including the mask class."""
        return len(self.elements) + 1

    @classmethod
    def tiny(cls, **changes: object) -> PeriodicMPConfig:
        """Test-sized preset: hidden 16, 2 layers, 4 frequencies (a few thousand parameters)."""
        base = {"hidden": 16, "layers": 2, "fourier_frequencies": 4, "time_dim": 8}
        return cls(**{**base, **changes})  # type: ignore[arg-type]

    @classmethod
    def small(cls, **changes: object) -> PeriodicMPConfig:
        """Shipping preset for mp_20-sized crystals: hidden 256, 4 layers, 10 frequencies (~2.5 M parameters)."""
        base = {"hidden": 256, "layers": 4, "fourier_frequencies": 10, "time_dim": 64}
        return cls(**{**base, **changes})  # type: ignore[arg-type]


class _EdgeInput(nn.Module):
    """``A x_i + B x_j + C fourier_ij + D ctx_b`` without forming the ``[E, 2H + 6K + H]`` concat."""

    def __init__(self, hidden: int, fourier_dim: int) -> None:
        super().__init__()
        self.source = nn.Linear(hidden, hidden)
        self.neighbor = nn.Linear(hidden, hidden, bias=False)
        self.fourier = nn.Linear(fourier_dim, hidden, bias=False)
        self.context = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: Tensor, fourier: Tensor, ctx: Tensor, edge_index: Tensor, crystal_idx: Tensor) -> Tensor:
        """Pre-activations ``[E, H]`` (``ctx_b`` is folded into the source atom's term before the gather)."""
        source = self.source(x) + self.context(ctx).index_select(0, crystal_idx)  # [N, H]
        neighbor = self.neighbor(x)  # [N, H]
        return source.index_select(0, edge_index[0]) + neighbor.index_select(0, edge_index[1]) + self.fourier(fourier)


class _Layer(nn.Module):
    """One pre-LN residual message-passing layer with mean aggregation over each atom's pairs."""

    def __init__(self, hidden: int, fourier_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.edge_in = _EdgeInput(hidden, fourier_dim)
        self.edge_out = nn.Linear(hidden, hidden)
        self.node = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.act = nn.SiLU()

    def forward(self, h: Tensor, fourier: Tensor, ctx: Tensor, edge_index: Tensor, crystal_idx: Tensor) -> Tensor:
        x = self.norm(h)
        m = self.act(self.edge_out(self.act(self.edge_in(x, fourier, ctx, edge_index, crystal_idx))))  # [E, H]
        agg = segment_mean(m, edge_index[0], h.shape[0])  # [N, H]
        return h + self.node(torch.cat([x, agg], dim=-1))


class PeriodicMP(nn.Module):
    """Periodic message-passing backbone over the fully connected in-cell graph; see the module docstring.

    ``model(state, t)`` follows the ``Backbone`` protocol; ``model(state, t, type_probs=p)`` reads
    soft types ``p [N, K]`` instead of ``state.atomic_numbers``. Inputs of any float dtype are
    accepted; computation and outputs are in the parameters' dtype (``model.double()`` for float64).
    """

    def __init__(self, config: PeriodicMPConfig) -> None:
        super().__init__()
        self.config = config
        h, k = config.hidden, config.fourier_frequencies
        fourier_dim = 6 * k
        self.type_embedding = TypeEmbedding(config.vocabulary, h)
        self.time_embedding = TimeEmbedding(config.time_dim, h)
        self.lattice_embedding = mlp(NUM_LATTICE_FEATURES, h, h)
        conditions = config.properties or config.categories
        self.conditioner = (
            Conditioner(config.properties, config.property_moments, config.categories, h) if conditions else None
        )
        self.node_context = nn.Linear(h, h)
        self.layers = nn.ModuleList(_Layer(h, fourier_dim) for _ in range(config.layers))
        self.final_norm = nn.LayerNorm(h)
        if config.output_coords:
            self.coord_edge_in = _EdgeInput(h, fourier_dim)
            self.coord_edge_out = nn.Sequential(nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 6 * k))
            self.coord_node = nn.Linear(h, 3)
        if config.output_types:
            self.type_head = mlp(h, h, config.num_types)
        if config.output_lattice:
            self.lattice_head = mlp(2 * h, h, 6)

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _check_time(self, t: Tensor, num_crystals: int) -> Tensor:
        t = torch.as_tensor(t)
        if t.dim() == 0:
            t = t.expand(num_crystals)
        if t.shape != (num_crystals,):
            raise ValueError(f"t must have shape ({num_crystals},) or be a scalar, got {tuple(t.shape)}")
        return t

    @property
    def type_vocabulary(self) -> TypeVocabulary:
        """The type vocabulary; ``forward(..., type_classes=)`` takes class indices of it."""
        return self.type_embedding.vocabulary

    def forward(
        self,
        state: CrystalBatch,
        t: Tensor,
        *,
        type_probs: Tensor | None = None,
        type_classes: Tensor | None = None,
    ) -> FieldOutputs:
        """Predict per-field vectors for ``state`` at times ``t [B]`` (0 = prior, 1 = data).

        Args:
            state: the (noisy) batch; ``atomic_numbers`` may hold ``MASK_Z``; ``properties`` and
                ``condition_mask`` drive conditioning.
            t: ``[B]`` times in [0, 1] (a scalar is broadcast).
            type_probs: optional ``[N, K]`` class probabilities used instead of ``atomic_numbers``.
            type_classes: optional ``[N]`` class indices of ``type_vocabulary`` for ``atomic_numbers``
                (a type process's working values; skips the Z → class lookup).

        Returns:
            ``FieldOutputs`` with ``frac_coords [N, 3]``, ``atomic_numbers [N, K]`` logits and
            ``lattice [B, 6]`` (``None`` for heads switched off).

        """
        cfg = self.config
        dtype = self.final_norm.weight.dtype
        b, n = state.num_crystals, state.atomic_numbers.shape[0]
        t = self._check_time(t, b).to(device=state.device)
        crystal_idx = state.crystal_idx

        # per crystal: time, lattice shape, properties -> ctx [B, H]
        ctx = self.time_embedding(t) + self.lattice_embedding(
            lattice_shape_features(state.lattice, state.num_atoms).to(dtype)
        )
        if self.conditioner is not None:
            ctx = ctx + self.conditioner(state)

        # per atom: type + context -> h [N, H]
        types = self.type_embedding(state.atomic_numbers, probs=type_probs, classes=type_classes)
        h = types + self.node_context(ctx).index_select(0, crystal_idx)

        # per pair: periodic Fourier features of Δf, computed in the input precision, once
        graph = in_cell_graph(state, self_loops=cfg.self_loops)
        fourier, derivative = frac_fourier_basis(graph.frac_diff, cfg.fourier_frequencies)
        fourier, derivative = fourier.to(dtype), derivative.to(dtype)
        edge_index = graph.edge_index

        for layer in self.layers:
            h = layer(h, fourier, ctx, edge_index, crystal_idx)
        h = self.final_norm(h)

        frac = types_out = lattice_out = None
        if cfg.output_coords:
            pre = self.coord_edge_in(h, fourier, ctx, edge_index, crystal_idx)
            coeff = self.coord_edge_out(pre).view(-1, 3, 2 * cfg.fourier_frequencies)  # [E, 3, 2K]
            pair = (coeff * derivative).sum(-1)  # [E, 3]
            frac = segment_mean(pair, edge_index[0], n) + self.coord_node(h)
        if cfg.output_types:
            types_out = self.type_head(h)
        if cfg.output_lattice:
            pooled = segment_mean(h, crystal_idx, b)  # [B, H]
            lattice_out = self.lattice_head(torch.cat([pooled, ctx], dim=-1))
        return FieldOutputs(frac_coords=frac, lattice=lattice_out, atomic_numbers=types_out)
