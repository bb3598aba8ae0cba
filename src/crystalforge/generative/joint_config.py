"""The joint (flow / diffusion) family: its config and its builder.

``ModelConfig`` is the plain-data description stored in every joint checkpoint; ``build_joint_model``
turns it (plus the dataset statistics, a value) into a ``JointModel``: one backbone chosen by name
from ``BACKBONES`` and one process per field chosen by ``kind`` from ``PROCESSES``. The family is
registered under the name ``"joint"`` in ``crystalforge.registry``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from torch import nn

from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import TypeVocabulary
from crystalforge.generative.interfaces import FieldProcess
from crystalforge.generative.joint import JointModel
from crystalforge.nn.conditioning import SPACE_GROUP_COLUMNS


@dataclass(frozen=True)
class BackboneConfig:
    """Backbone name and sizes (see ``nn.backbones.PeriodicMPConfig``)."""

    name: str = "periodic_mp"
    hidden: int = 256
    layers: int = 4
    fourier_frequencies: int = 10
    time_dim: int = 64
    self_loops: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """What to generate and how.

    Attributes:
        kind: ``"flow"`` (Riemannian flow matching: torus geodesics, linear lattice-code path,
            masked discrete flow for types) or ``"diffusion"`` (wrapped-normal score matching,
            DDPM lattice, absorbing D3PM types: the DiffCSP/MatterGen recipe).
        task: ``"csp"`` (composition given) or ``"dng"`` (types generated too).
        elements: the type vocabulary (atomic numbers); empty means "the training data's elements".
        properties: continuous properties to condition on (classifier-free guidance needs them).
        categories: categorical conditions (``space_group``, ``crystal_system``; ``nn.conditioning``).
        condition_dropout: training hides every condition of a crystal with this probability, and
            each one alone with it too (the unconditional model that guidance contrasts with).
        property_moments: ``{name: (mean, std)}`` standardising each continuous condition; filled
            from the training data by ``resolve_joint_config``.
        anti_annealing: FlowMM's inference-time velocity scale for flows (0 = plain Euler).
        loss_weights: per-field loss weights (``frac_coords``, ``lattice``, ``atomic_numbers``).
        time_power: training times are ``t = u^(1/time_power)``, ``u ~ U(0, 1)``: 1 is uniform,
            larger values draw more times near the data (t → 1), where precision is decided.

    """

    kind: Literal["flow", "diffusion"] = "flow"
    task: Literal["csp", "dng"] = "csp"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    elements: tuple[int, ...] = ()
    properties: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    condition_dropout: float = 0.1
    property_moments: dict[str, tuple[float, float]] = field(default_factory=dict)
    anti_annealing: float = 0.0
    loss_weights: dict[str, float] = field(default_factory=dict)
    time_power: float = 1.0


def _periodic_mp(config: ModelConfig, elements: tuple[int, ...]) -> nn.Module:
    from crystalforge.nn.backbones import PeriodicMP, PeriodicMPConfig

    b = config.backbone
    return PeriodicMP(
        PeriodicMPConfig(
            hidden=b.hidden,
            layers=b.layers,
            fourier_frequencies=b.fourier_frequencies,
            time_dim=b.time_dim,
            elements=elements,
            properties=config.properties,
            property_moments=dict(config.property_moments),
            categories=config.categories,
            output_types=config.task == "dng",
            self_loops=b.self_loops,
        )
    )


BACKBONES: dict[str, Callable[[ModelConfig, tuple[int, ...]], nn.Module]] = {"periodic_mp": _periodic_mp}


def _flow_processes(config: ModelConfig, vocab: TypeVocabulary, stats: DatasetStats | None) -> dict[str, FieldProcess]:
    from crystalforge.generative.flow import LatticeFlow, MaskedTypeFlow, TorusFlow
    from crystalforge.generative.process_base import FixedField

    return {
        "frac_coords": TorusFlow(anti_annealing=config.anti_annealing),
        "lattice": LatticeFlow(stats, anti_annealing=config.anti_annealing),
        "atomic_numbers": MaskedTypeFlow(vocab) if config.task == "dng" else FixedField("atomic_numbers"),
    }


def _diffusion_processes(
    config: ModelConfig, vocab: TypeVocabulary, stats: DatasetStats | None
) -> dict[str, FieldProcess]:
    from crystalforge.generative.diffusion import AbsorbingD3PM, LatticeDDPM, WrappedNormalDiffusion
    from crystalforge.generative.process_base import FixedField

    return {
        "frac_coords": WrappedNormalDiffusion(),
        "lattice": LatticeDDPM(stats),
        "atomic_numbers": AbsorbingD3PM(vocab) if config.task == "dng" else FixedField("atomic_numbers"),
    }


PROCESSES: dict[str, Callable[[ModelConfig, TypeVocabulary, DatasetStats | None], dict[str, FieldProcess]]] = {
    "flow": _flow_processes,
    "diffusion": _diffusion_processes,
}


def resolve_elements(config: ModelConfig, stats: DatasetStats | None) -> tuple[int, ...]:
    """The vocabulary's elements: the config's, else those present in the training statistics."""
    if config.elements:
        return tuple(sorted(set(config.elements)))
    if stats is None:
        raise ValueError("ModelConfig.elements is empty and no dataset statistics were given")
    return tuple(stats.elements)


def resolve_moments(config: ModelConfig, stats: DatasetStats | None) -> dict[str, tuple[float, float]]:
    """Mean and std of each continuous condition: the config's, else the training data's.

    Raises:
        ValueError: for a condition the training data does not hold.

    """
    moments = dict(config.property_moments)
    missing = [p for p in config.properties if p not in moments]
    if not missing:
        return {p: moments[p] for p in config.properties}
    known = (stats.property_moments or {}) if stats is not None else {}
    absent = [p for p in missing if p not in known]
    if absent:
        have = ", ".join(sorted(known)) or "none"
        raise ValueError(f"cannot condition on {absent}: the training data has no such property (it has: {have})")
    for p in missing:
        mean, std, _ = known[p]
        moments[p] = (mean, std if std > 0 else 1.0)
    return {p: moments[p] for p in config.properties}


def check_categories(categories: Sequence[str], stats: DatasetStats | None) -> None:
    """Refuse a categorical condition the training data cannot give (its embedding would never train)."""
    if not categories or stats is None or stats.property_moments is None:
        return  # statistics from before property moments were recorded: nothing to check against
    columns = set(stats.property_moments)
    if not columns & set(SPACE_GROUP_COLUMNS):
        raise ValueError(
            f"cannot condition on {list(categories)}: the training data has no space-group column "
            f"({' or '.join(SPACE_GROUP_COLUMNS)}; it has: {', '.join(sorted(columns)) or 'none'})"
        )


def resolve_joint_config(config: ModelConfig, stats: DatasetStats | None) -> ModelConfig:
    """The config with its data-derived fields filled in (vocabulary elements, condition moments)."""
    check_categories(config.categories, stats)
    return replace(config, elements=resolve_elements(config, stats), property_moments=resolve_moments(config, stats))


def build_joint_model(config: ModelConfig, stats: DatasetStats | None) -> JointModel:
    """A ``JointModel`` for ``config``; ``stats`` informs the lattice prior and the vocabulary."""
    if config.backbone.name not in BACKBONES:
        raise KeyError(f"unknown backbone {config.backbone.name!r} (known: {', '.join(sorted(BACKBONES))})")
    if config.kind not in PROCESSES:
        raise KeyError(f"unknown model kind {config.kind!r} (known: {', '.join(sorted(PROCESSES))})")
    elements = resolve_elements(config, stats)
    backbone = BACKBONES[config.backbone.name](config, elements)
    processes = PROCESSES[config.kind](config, TypeVocabulary(elements), stats)
    return JointModel(
        backbone,
        processes,
        loss_weights=config.loss_weights,
        time_power=config.time_power,
        condition_dropout=config.condition_dropout,
    )
