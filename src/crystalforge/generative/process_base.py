"""What every field process shares: helpers, base classes per field, and ``FixedField``.

Flows (``generative.flow``) and diffusions (``generative.diffusion``) subclass these bases; each
base fixes a field's *working representation* (``encode(batch)`` reads it, ``decode(x, batch)``
turns it back into the batch field): fractional coordinates on the flat torus, the standardised
lattice code, type-vocabulary class indices. Time runs from 0 (prior) to 1 (data); ``t`` is one
value per crystal ``[B]`` broadcast to atoms through ``batch.crystal_idx``. Losses are per crystal
``[B]``. Every random draw takes an optional ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import TypeVocabulary
from crystalforge.core.lattice import LATTICE_CODE_DIM, code_to_lattice, lattice_to_code
from crystalforge.core.periodic import wrap_frac
from crystalforge.core.segment import segment_mean, segment_sum
from crystalforge.generative.interfaces import PathSample
from crystalforge.geometry.manifolds import FlatTorus

MASK_CLASS = 0
"""Class index of the mask (absorbing) state in a ``TypeVocabulary``."""

_TIME_EPS = 1e-9


# ---- shared helpers ------------------------------------------------------------------------------
def crystal_values(value: Tensor | float, batch: CrystalBatch, *, dtype: torch.dtype) -> Tensor:
    """``value`` (a scalar, ``[B]`` or ``[B, 1]``) as a ``[B]`` tensor on the batch's device."""
    v = torch.as_tensor(value, dtype=dtype, device=batch.device)
    if v.dim() == 0:
        return v.expand(batch.num_crystals)
    return v.reshape(batch.num_crystals)


def atom_values(value: Tensor | float, batch: CrystalBatch, *, dtype: torch.dtype) -> Tensor:
    """``value`` (a scalar or per crystal) repeated for every atom ``[N]``."""
    return crystal_values(value, batch, dtype=dtype)[batch.crystal_idx]


def remove_crystal_mean(vectors: Tensor, batch: CrystalBatch) -> Tensor:
    """``vectors [N, d]`` minus their per-crystal mean (a zero-mean velocity per crystal)."""
    mean = segment_mean(vectors, batch.crystal_idx, batch.num_crystals)
    return vectors - mean[batch.crystal_idx]


def mask_logits(logits: Tensor) -> Tensor:
    """``logits [N, K]`` with the mask class made impossible (``−inf``)."""
    out = logits.clone()
    out[..., MASK_CLASS] = float("-inf")
    return out


def unmask(
    classes: Tensor,  # [N] int64, MASK_CLASS where masked
    logits: Tensor,  # [N, K]
    prob: Tensor,  # [N] probability that a masked atom is revealed in this step
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Reveal each masked atom with probability ``prob``, drawing its class from ``softmax(logits/T)``.

    The mask class is never drawn; revealed atoms are never masked again.
    """
    masked = classes == MASK_CLASS
    u = torch.rand(classes.shape, generator=generator, dtype=prob.dtype, device=classes.device)
    reveal = masked & (u < prob)
    # draw for every atom and keep the revealed ones: no data-dependent shapes, no device sync
    probs = torch.softmax(mask_logits(logits).to(torch.float64) / temperature, -1)
    drawn = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.where(reveal, drawn, classes)


class FieldProcessBase:
    """Shared defaults: identity ``encode``/``decode`` of ``field``, no corrector, no velocity.

    ``has_corrector`` tells a predictor–corrector sampler whether ``correct`` does anything (so it
    can skip the extra backbone call). ``predicts_velocity`` says the backbone output is a
    velocity and ``step`` an Euler move along it, so a sampler may apply Heun's rule and pass
    ``step(..., anti_annealing=s)``.
    """

    field: str = ""
    has_corrector: bool = False
    predicts_velocity: bool = False

    def encode(self, batch: CrystalBatch) -> Tensor:
        """The field's working representation read from ``batch``."""
        value: Tensor = getattr(batch, self.field)  # ``field`` names one of the batch's tensor fields
        return value

    def decode(self, x: Tensor, batch: CrystalBatch) -> Tensor:
        """The batch field value for the working representation ``x``."""
        return x

    def correct(
        self,
        x_t: Tensor,
        prediction: Tensor,
        t: Tensor,
        batch: CrystalBatch,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A corrector move at fixed ``t`` (identity unless ``has_corrector``)."""
        return x_t


# ---- fractional coordinates ----------------------------------------------------------------------
class TorusProcessBase(FieldProcessBase):
    """Working representation: fractional coordinates ``[N, 3]`` on the unit flat torus."""

    field = "frac_coords"
    manifold = FlatTorus()

    def decode(self, x: Tensor, batch: CrystalBatch) -> Tensor:
        """Wrapped fractional coordinates ``[N, 3]``."""
        return wrap_frac(x)

    def sample_prior(self, template: CrystalBatch, generator: torch.Generator | None = None) -> Tensor:
        """Uniform fractional coordinates ``[N, 3]``."""
        like = template.frac_coords
        return self.manifold.random_uniform(*like.shape, generator=generator, dtype=like.dtype, device=like.device)

    def loss(self, prediction: Tensor, path: PathSample, batch: CrystalBatch) -> Tensor:
        """Per-crystal mean over atoms of the squared error averaged over the 3 components ``[B]``."""
        err = (prediction - path.target).pow(2).mean(-1)
        return segment_mean(err, batch.crystal_idx, batch.num_crystals)


# ---- lattice -------------------------------------------------------------------------------------
class LatticeStandardizer:
    """Lattice ⇄ standardised lattice code ``z = (lattice_to_code(L, N) − mean) / std`` ``[B, 6]``.

    ``mean``/``std`` come from ``DatasetStats.lattice_code_moments()`` (data-informed prior) or
    default to 0/1. ``std`` is floored at ``min_std`` so a dataset where a code entry never varies
    (all-cubic Perov-5 has every angle at 90°) does not divide by zero. ``low``/``high``: the
    data's range of the code (``DatasetStats.lattice_code_min``/``max``; None when unknown),
    given back standardised by ``bounds``.
    """

    def __init__(
        self,
        mean: Sequence[float] = (0.0,) * LATTICE_CODE_DIM,
        std: Sequence[float] = (1.0,) * LATTICE_CODE_DIM,
        *,
        min_std: float = 1e-3,
        low: Sequence[float] | None = None,
        high: Sequence[float] | None = None,
    ) -> None:
        if len(mean) != LATTICE_CODE_DIM or len(std) != LATTICE_CODE_DIM:
            raise ValueError(f"mean and std need {LATTICE_CODE_DIM} entries, got {len(mean)} and {len(std)}")
        if (low is None) != (high is None):
            raise ValueError("low and high are given together or not at all")
        if low is not None and high is not None:
            if len(low) != LATTICE_CODE_DIM or len(high) != LATTICE_CODE_DIM:
                raise ValueError(f"low and high need {LATTICE_CODE_DIM} entries, got {len(low)} and {len(high)}")
            if any(a > b for a, b in zip(low, high, strict=True)):
                raise ValueError(f"low {list(low)} exceeds high {list(high)}")
        self.mean = torch.tensor(list(mean), dtype=torch.float64)
        self.std = torch.tensor(list(std), dtype=torch.float64).clamp(min=min_std)
        self.range: tuple[Tensor, Tensor] | None = None
        if low is not None and high is not None:
            self.range = ((torch.tensor(list(low), dtype=torch.float64) - self.mean) / self.std,
                          (torch.tensor(list(high), dtype=torch.float64) - self.mean) / self.std)  # fmt: skip
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}
        self._bounds: dict[tuple[torch.device, torch.dtype, float], tuple[Tensor, Tensor]] = {}

    @classmethod
    def from_stats(cls, stats: DatasetStats | None, *, min_std: float = 1e-3) -> LatticeStandardizer:
        """From dataset statistics (identity standardisation when ``stats`` is None)."""
        if stats is None:
            return cls(min_std=min_std)
        mean, std = stats.lattice_code_moments()
        return cls(mean, std, min_std=min_std, low=stats.lattice_code_min, high=stats.lattice_code_max)

    def bounds(self, like: Tensor, margin: float) -> tuple[Tensor, Tensor] | None:
        """The data's code range, standardised and widened by ``margin`` on each side (None: unknown)."""
        if self.range is None:
            return None
        key = (like.device, like.dtype, margin)
        if key not in self._bounds:  # called every sampling step: one copy per device, dtype and margin
            low, high = self.range
            self._bounds[key] = (low - margin).to(like.device, like.dtype), (high + margin).to(like.device, like.dtype)
        return self._bounds[key]

    def _moments(self, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cache:  # one host→device copy per device and dtype
            self._cache[key] = (self.mean.to(like.device, like.dtype), self.std.to(like.device, like.dtype))
        return self._cache[key]

    def encode(self, lattice: Tensor, num_atoms: Tensor) -> Tensor:
        """Standardised code ``[B, 6]`` of ``lattice [B, 3, 3]``."""
        mean, std = self._moments(lattice)
        return (lattice_to_code(lattice, num_atoms) - mean) / std

    def decode(self, z: Tensor, num_atoms: Tensor) -> Tensor:
        """Lattice ``[B, 3, 3]`` (standard orientation) of a standardised code ``z [B, 6]``."""
        mean, std = self._moments(z)
        return code_to_lattice(mean + std * z, num_atoms)


class LatticeCodeProcessBase(FieldProcessBase):
    """Working representation: the standardised lattice code ``[B, 6]``."""

    field = "lattice"

    def __init__(self, stats: DatasetStats | None, min_std: float) -> None:
        self.standardizer = LatticeStandardizer.from_stats(stats, min_std=min_std)

    def encode(self, batch: CrystalBatch) -> Tensor:  # noqa: D102
        return self.standardizer.encode(batch.lattice, batch.num_atoms)

    def decode(self, x: Tensor, batch: CrystalBatch) -> Tensor:  # noqa: D102
        return self.standardizer.decode(x, batch.num_atoms)

    def sample_prior(self, template: CrystalBatch, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal codes ``[B, 6]`` (the dataset's code distribution to second order)."""
        like = template.lattice
        return torch.randn(
            template.num_crystals, LATTICE_CODE_DIM, generator=generator, dtype=like.dtype, device=like.device
        )

    def loss(self, prediction: Tensor, path: PathSample, batch: CrystalBatch) -> Tensor:
        """Mean squared error over the 6 code entries, per crystal ``[B]``."""
        return (prediction - path.target).pow(2).mean(-1)


# ---- atom types ----------------------------------------------------------------------------------
class TypeProcessBase(FieldProcessBase):
    """Working representation: ``TypeVocabulary`` class indices ``[N]`` (0 = mask)."""

    field = "atomic_numbers"

    def __init__(self, vocab: TypeVocabulary, temperature: float) -> None:
        self.vocab = vocab
        self.temperature = temperature
        self._tables_cpu = (torch.from_numpy(vocab.class_of_z()), torch.from_numpy(vocab.z_of_class()))
        self._tables_on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(Z → class lookup [MAX_Z + 1], class → Z table [K])`` on ``device``."""
        if device not in self._tables_on:
            self._tables_on[device] = (self._tables_cpu[0].to(device), self._tables_cpu[1].to(device))
        return self._tables_on[device]

    @property
    def num_classes(self) -> int:
        """K, including the mask class."""
        return self.vocab.size

    def encode(self, batch: CrystalBatch) -> Tensor:
        """Class indices ``[N]``; raises ``KeyError`` for an element the vocabulary lacks."""
        classes = self._tables(batch.atomic_numbers.device)[0][batch.atomic_numbers]
        if bool((classes < 0).any()):
            bad = sorted(set(batch.atomic_numbers[classes < 0].tolist()))
            raise KeyError(f"atomic numbers {bad} are not in this vocabulary")
        return classes

    def decode(self, x: Tensor, batch: CrystalBatch) -> Tensor:
        """Atomic numbers ``[N]`` (mask → ``MASK_Z``)."""
        return self._tables(x.device)[1][x]

    def sample_prior(self, template: CrystalBatch, generator: torch.Generator | None = None) -> Tensor:
        """Every atom masked ``[N]``."""
        return torch.full_like(template.atomic_numbers, MASK_CLASS)

    def _masked_path(
        self, x_data: Tensor, keep_prob: Tensor, weight: Tensor, generator: torch.Generator | None
    ) -> PathSample:
        u = torch.rand(x_data.shape, generator=generator, dtype=keep_prob.dtype, device=x_data.device)
        keep = u < keep_prob
        x_t = torch.where(keep, x_data, torch.full_like(x_data, MASK_CLASS))
        return PathSample(x_t=x_t, target=x_data, weight=torch.where(keep, torch.zeros_like(weight), weight))

    def _weighted_cross_entropy(self, prediction: Tensor, path: PathSample, batch: CrystalBatch) -> Tensor:
        """Per-crystal sum ``[B]`` of the per-atom loss weight times the clean class's cross-entropy.

        Only masked atoms count (the mask class is excluded from the logits); without a
        ``path.weight`` every masked atom has weight 1.
        """
        masked = path.x_t == MASK_CLASS
        ce = F.cross_entropy(mask_logits(prediction), path.target, reduction="none")
        ce = torch.where(masked, ce, torch.zeros_like(ce))
        weight = masked.to(ce.dtype) if path.weight is None else path.weight.to(ce.dtype)
        return segment_sum(weight * ce, batch.crystal_idx, batch.num_crystals)

    def _reveal(
        self,
        x_t: Tensor,
        logits: Tensor,
        prob: Tensor,
        temperature: float | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """``unmask`` with ``prob`` clamped to [0, 1] and the process's temperature unless one is given."""
        return unmask(
            x_t,
            logits,
            prob.clamp(0.0, 1.0),
            temperature=self.temperature if temperature is None else temperature,
            generator=generator,
        )


# ---- fixed fields (CSP) --------------------------------------------------------------------------
class FixedField(FieldProcessBase):
    """A field that is not generated: the template's value is kept (CSP keeps ``atomic_numbers``).

    ``sample_prior`` copies the template's field, paths are the data itself, the loss is zero and
    ``step`` returns the state unchanged, so crystal structure prediction and de novo generation
    share the model and sampler code and differ only in the process dict.
    """

    def __init__(self, field: str) -> None:
        self.field = field

    def sample_prior(self, template: CrystalBatch, generator: torch.Generator | None = None) -> Tensor:
        """The template's value of the field (a copy)."""
        value: Tensor = getattr(template, self.field)  # ``field`` names one of the batch's tensor fields
        return value.clone()

    def sample_path(
        self, x_data: Tensor, t: Tensor, batch: CrystalBatch, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """The data itself."""
        return PathSample(x_t=x_data, target=x_data)

    def loss(self, prediction: Tensor | None, path: PathSample, batch: CrystalBatch) -> Tensor:
        """Zeros ``[B]``."""
        return torch.zeros(batch.num_crystals, dtype=batch.frac_coords.dtype, device=batch.device)

    def step(
        self,
        x_t: Tensor,
        prediction: Tensor | None,
        t: Tensor,
        dt: Tensor | float,
        batch: CrystalBatch,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``x_t`` unchanged."""
        return x_t
