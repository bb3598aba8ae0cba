"""The family registry: model family name → its config type and builder.

Every generative family (the flow/diffusion ``joint`` family and the search baselines
``random_symmetric`` and ``substitution`` here; a VAE, a GAN, an autoregressive model or a user's own
elsewhere) registers one ``Family``. Training builds models through it,
checkpoints record the family's name, and loading dispatches on that name, so nothing else in the
package names a family. Families outside the package register with ``register_family`` or through
the ``crystalforge.families`` entry-point group (an entry point names a ``Family`` object).
Configs hold names and plain values, never module paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from crystalforge.config import from_dict
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.generative.interfaces import GenerativeModel

C = TypeVar("C")

ENTRY_POINT_GROUP = "crystalforge.families"
DEFAULT_FAMILY = "joint"


@dataclass(frozen=True)
class Family(Generic[C]):
    """One model family.

    Attributes:
        name: the family's registry name (recorded in checkpoints).
        config_type: the frozen dataclass describing a model of this family (read from YAML).
        build: ``(config, dataset_stats) -> GenerativeModel``.
        resolve: fills the config's data-derived fields before building (e.g. the element
            vocabulary), so the stored config rebuilds the same model without the data.
        description: one line for listings.

    """

    name: str
    config_type: type[C]
    build: Callable[[C, DatasetStats | None], GenerativeModel]
    resolve: Callable[[C, DatasetStats | None], C] | None = None
    description: str = ""

    def parse(self, data: object) -> C:
        """The family's config: ``data`` itself when it is one, else read from plain data (a mapping).

        Unknown keys and values of the wrong type are ``ConfigError``s naming the key.
        """
        if isinstance(data, self.config_type):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(f"family {self.name!r}: expected a mapping or {self.config_type.__name__}, got {data!r}")
        return from_dict(self.config_type, data, where="model")


def _joint() -> Family[Any]:
    from crystalforge.generative.joint_config import ModelConfig, build_joint_model, resolve_joint_config

    return Family(
        DEFAULT_FAMILY,
        ModelConfig,
        build_joint_model,
        resolve_joint_config,
        "one backbone + a process per field: Riemannian flow matching or diffusion, CSP or DNG",
    )


def _random_symmetric() -> Family[Any]:
    from crystalforge.generative.search import RandomSymmetricConfig, build_random_symmetric, resolve_random_symmetric

    return Family(
        "random_symmetric",
        RandomSymmetricConfig,
        build_random_symmetric,
        resolve_random_symmetric,
        "search baseline: remembered compositions in random space groups (PyXtal), CSP or DNG",
    )


def _substitution() -> Family[Any]:
    from crystalforge.generative.search import SubstitutionConfig, build_substitution, resolve_substitution

    return Family(
        "substitution",
        SubstitutionConfig,
        build_substitution,
        resolve_substitution,
        "search baseline: charge-neutral ion substitutions (Hautier's table) on remembered prototypes, DNG",
    )


def _cdvae() -> Family[Any]:
    from crystalforge.generative.vae import CDVAEConfig, build_cdvae, resolve_cdvae

    return Family(
        "cdvae",
        CDVAEConfig,
        build_cdvae,
        resolve_cdvae,
        "CDVAE / Con-CDVAE: periodic-GNN encoder, latent heads, z-conditioned flow/score decoder; CSP or DNG",
    )


def _matgan() -> Family[Any]:
    from crystalforge.generative.gan import MatGANConfig, build_matgan, resolve_matgan

    return Family(
        "matgan",
        MatGANConfig,
        build_matgan,
        resolve_matgan,
        "MatGAN: WGAN-GP over composition matrices, SMACT-screened, structures by a named CSP model, DNG",
    )


def _autoregressive() -> Family[Any]:
    from crystalforge.generative.autoregressive import (
        AutoregressiveConfig,
        build_autoregressive,
        resolve_autoregressive,
    )

    return Family(
        "autoregressive",
        AutoregressiveConfig,
        build_autoregressive,
        resolve_autoregressive,
        "decoder-only transformer over crystal text (CrystaLLM/MatterGPT): composition and property prefixes",
    )


_BUILTIN: dict[str, Callable[[], Family[Any]]] = {
    DEFAULT_FAMILY: _joint,
    "random_symmetric": _random_symmetric,
    "substitution": _substitution,
    "autoregressive": _autoregressive,
    "cdvae": _cdvae,
    "matgan": _matgan,
}
_REGISTERED: dict[str, Family[Any]] = {}


def register_family(family: Family[Any], *, replace: bool = False) -> None:
    """Make ``family`` known by its name (``replace`` allows overriding an existing one)."""
    if not replace and (family.name in _REGISTERED or family.name in _BUILTIN):
        raise ValueError(f"a model family named {family.name!r} is already registered")
    _REGISTERED[family.name] = family


def unregister_family(name: str) -> None:
    """Forget a family registered with ``register_family`` (tests, notebooks)."""
    _REGISTERED.pop(name, None)


def family_names() -> list[str]:
    """Every known family name (built-in, registered, and entry points)."""
    names = set(_BUILTIN) | set(_REGISTERED) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def get_family(name: str) -> Family[Any]:
    """The family called ``name``; ``KeyError`` listing the known ones otherwise."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        return _BUILTIN[name]()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            family = ep.load()
            if not isinstance(family, Family):
                raise TypeError(f"entry point {ep.value!r} of {ENTRY_POINT_GROUP} is not a Family")
            return family
    raise KeyError(f"unknown model family {name!r} (known: {', '.join(family_names())})")


def build_model(config: object, stats: DatasetStats | None, *, family: str = DEFAULT_FAMILY) -> GenerativeModel:
    """A model of ``family`` from its config (a dataclass or plain data) and dataset statistics."""
    fam = get_family(family)
    return fam.build(fam.parse(config), stats)


def resolve_config(config: object, stats: DatasetStats | None, *, family: str = DEFAULT_FAMILY) -> object:
    """The family config with its data-derived fields filled in from ``stats``."""
    fam = get_family(family)
    parsed = fam.parse(config)
    return parsed if fam.resolve is None else fam.resolve(parsed, stats)
