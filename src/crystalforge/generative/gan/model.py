"""The ``matgan`` family: a WGAN-GP over composition matrices whose compositions a CSP model builds.

MatGAN (Dan et al., npj Comput. Mater. 6, 84, 2020) learns the distribution of compositions with a
Wasserstein GAN and screens its outputs for charge neutrality; here the compositions then flow into
a CSP model of the flagship family, so one ``crystalforge generate`` goes composition → structure.

**Training with one optimiser.** ``loss(batch)`` returns one scalar whose single backward gives each
network its own WGAN-GP gradient, so the shared loop (one AdamW, no trainer branch) trains both:

- critic term ``D(G(z).detach()) − D(x) + λ·(‖∇D(x̂)‖₂ − 1)²`` (Gulrajani et al. 2017; ``x̂`` on the
  segment between a real and a fake matrix): the generator is cut off by ``detach``;
- generator term ``−D(G(z))`` evaluated with the critic's parameters *detached*
  (``torch.func.functional_call``), so only the generator gets its gradient; it is added on every
  ``n_critic``-th training call only (a step counter buffer), giving ``n_critic`` critic updates per
  generator update. On the other calls the generator's gradients stay ``None`` and AdamW skips it.

Reported parts: ``critic_loss``, ``wasserstein`` (``D(x) − D(G(z))``, the critic's estimate of the
distance), ``gradient_penalty`` and ``generator_loss`` (``−D(G(z))``, on every call). Validation
(no autograd outside) still takes the penalty's input gradient, without a graph.

**Sampling** (``tasks = ("dng",)``): for each template crystal whose types are all ``MASK_Z`` a
composition is drawn from the generator (``drawing``: usable sizes, SMACT screening when
``screen``); a crystal whose types are all given keeps them (``generate --composition``). The
compositions become a CSP template (its atom counts follow the compositions, not the template) and
the CSP model named by ``csp_model`` samples the structures with the plan's sampler settings and
constraints (which keep the composition's types: ``TypesKept``); its steps are yielded. The
checkpoint stores that name, never the CSP weights: ``training.loading`` binds a loader
(``bind_model_loader``) and the CSP model is loaded on first use; ``set_csp_model`` hands one over
directly. Element-set guidance (``AllowedElements``: any
guidance with an ``elements`` tuple) restricts the rows that may hold atoms, as do the elements the
CSP model can place: draws are kept when the generator's own composition lies inside (rejection),
else cut down to the set (``drawing``, logged); other guidance is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.func import functional_call

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import MASK_Z, MAX_Z, TypeVocabulary
from crystalforge.core.segment import segment_sum
from crystalforge.generative.gan.drawing import DrawTally, draw_compositions
from crystalforge.generative.gan.encoding import CompositionCodec
from crystalforge.generative.gan.networks import Critic, Generator
from crystalforge.generative.gan.screening import is_charge_neutral
from crystalforge.generative.interfaces import (
    Constraint,
    GenerativeModel,
    SamplePlan,
    SamplerConfig,
    SampleStep,
    StepContext,
)

__all__ = ["FAMILY", "MatGAN", "MatGANConfig", "ModelLoader", "build_matgan", "resolve_matgan"]

logger = logging.getLogger(__name__)

FAMILY = "matgan"

ModelLoader = Callable[[str], tuple[GenerativeModel, SamplerConfig]]
"""A shipped model name or ``model.pt`` path → (model, its default sampler)."""


@dataclass(frozen=True)
class MatGANConfig:
    """Options of the ``matgan`` family (``model:`` in a training YAML).

    Attributes:
        csp_model: the CSP model that builds structures (a shipped name such as ``mp_20-csp`` or a
            ``model.pt`` path); stored by name, loaded when sampling.
        latent_dim, hidden, layers: generator input size, width and hidden layers.
        critic_hidden, critic_layers: critic width and hidden layers.
        n_critic: critic updates per generator update.
        gp_weight: λ of the gradient penalty.
        screen: resample compositions that fail SMACT charge neutrality (needs ``smact``).
        rounds, per_round: drawing budget per crystal (``drawing``).
        elements: the matrix rows (atomic numbers); empty: the training data's (``resolve_matgan``).
        max_count: the largest count of a column; 0: the data's largest cell.
        max_atoms: the largest composition drawn; 0: the data's largest cell.

    """

    csp_model: str = "mp_20-csp"
    latent_dim: int = 64
    hidden: int = 256
    layers: int = 2
    critic_hidden: int = 256
    critic_layers: int = 2
    n_critic: int = 5
    gp_weight: float = 10.0
    screen: bool = True
    rounds: int = 20
    per_round: int = 8
    elements: tuple[int, ...] = ()
    max_count: int = 0
    max_atoms: int = 0

    def __post_init__(self) -> None:
        sizes = {"latent_dim": self.latent_dim, "hidden": self.hidden, "critic_hidden": self.critic_hidden,
                 "n_critic": self.n_critic, "rounds": self.rounds, "per_round": self.per_round}  # fmt: skip
        bad = [f"{k}={v}" for k, v in sizes.items() if v < 1]
        if bad or self.layers < 0 or self.critic_layers < 0 or self.gp_weight < 0:
            raise ValueError(f"matgan: sizes must be >= 1, layers and gp_weight >= 0 ({', '.join(bad) or 'layers'})")
        if self.max_count < 0 or self.max_atoms < 0:
            raise ValueError(f"matgan: max_count and max_atoms must be >= 0, got {self.max_count}, {self.max_atoms}")
        outside = [z for z in self.elements if not 1 <= z <= MAX_Z]
        if outside:
            raise ValueError(f"matgan: elements {outside} are not atomic numbers 1..{MAX_Z}")
        if not self.csp_model.strip():
            raise ValueError("matgan: csp_model must name the CSP model that builds the structures")

    @property
    def task(self) -> str:
        """``"dng"``: what a model card's ``task`` says (not a setting)."""
        return "dng"

    @property
    def kind(self) -> str:
        """``"gan"``: what a model card's ``kind`` says (not a setting)."""
        return "gan"


class MatGAN(nn.Module):
    """WGAN-GP composition generator + a CSP model by name; see the module docstring."""

    tasks = ("dng",)
    conditions: tuple[str, ...] = ()

    def __init__(self, config: MatGANConfig) -> None:
        super().__init__()
        if not config.elements or config.max_count < 1 or config.max_atoms < 1:
            raise ValueError("matgan: elements, max_count and max_atoms are unset: resolve the config from data first")
        self.config = config
        self.codec = CompositionCodec(tuple(sorted(set(config.elements))), config.max_count)
        c = self.codec
        self.generator = Generator(config.latent_dim, config.hidden, config.layers, c.vocabulary, c.num_classes)
        self.critic = Critic(c.num_elements, c.num_classes, config.critic_hidden, config.critic_layers)
        self.step: Tensor
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))  # training calls of ``loss``
        self._loader: ModelLoader | None = None
        self._csp: tuple[GenerativeModel, SamplerConfig] | None = None  # a tuple: never a submodule

    @property
    def backbone(self) -> Generator:
        """The generator (its ``type_vocabulary`` is what element-set steering reads)."""
        return self.generator

    # ---- training -------------------------------------------------------------------------------
    def loss(self, batch: CrystalBatch, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"loss", "critic_loss", "wasserstein", "gradient_penalty", "generator_loss"}`` (module docstring)."""
        weight = next(self.critic.parameters())
        dtype, device = weight.dtype, weight.device
        real = self.codec.encode(batch, dtype).to(device)  # [B, E, C]
        b = real.shape[0]
        rng = generator.device if generator is not None else device
        z = torch.randn(b, self.config.latent_dim, generator=generator, device=rng, dtype=dtype).to(device)
        alpha = torch.rand(b, 1, 1, generator=generator, device=rng, dtype=dtype).to(device)
        fake, _ = self.generator(z)
        d_real, d_fake = self.critic(real), self.critic(fake.detach())
        wasserstein = d_real.mean() - d_fake.mean()
        penalty = self._gradient_penalty(alpha * real + (1 - alpha) * fake.detach())
        critic_loss = -wasserstein + self.config.gp_weight * penalty
        loss = critic_loss
        training = self.training and torch.is_grad_enabled()
        if training:
            if int(self.step) % self.config.n_critic == self.config.n_critic - 1:
                frozen = {name: p.detach() for name, p in self.critic.named_parameters()}
                loss = loss - functional_call(self.critic, frozen, (fake,)).mean()
            self.step += 1
        return {
            "loss": loss,
            "critic_loss": critic_loss.detach(),
            "wasserstein": wasserstein.detach(),
            "gradient_penalty": penalty.detach(),
            "generator_loss": -d_fake.mean().detach(),
        }

    def _gradient_penalty(self, mixed: Tensor) -> Tensor:
        """``mean((‖∇_x̂ D(x̂)‖₂ − 1)²)``; differentiable when autograd is on outside."""
        graph = torch.is_grad_enabled()
        with torch.enable_grad():
            point = mixed.detach().requires_grad_(True)  # a leaf: ``mixed`` holds no path to the generator
            (grad,) = torch.autograd.grad(self.critic(point).sum(), point, create_graph=graph)
        penalty: Tensor = (grad.flatten(1).norm(dim=1) - 1.0).pow(2).mean()
        return penalty

    # ---- compositions -----------------------------------------------------------------------------
    def draw(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        row_mask: Tensor | None = None,
        screen: bool | None = None,
    ) -> tuple[Tensor, DrawTally]:
        """Counts ``[n, E]`` (over ``codec.elements``) of ``n`` drawn compositions, and the tally.

        ``row_mask [E]``: the elements allowed (``drawing``); ``screen`` (None: the config's) rejects
        compositions that fail SMACT charge neutrality.
        """
        use_screen = self.config.screen if screen is None else screen
        return draw_compositions(
            self.generator, self.codec, n, max_atoms=self.config.max_atoms, row_mask=row_mask,
            screen=is_charge_neutral if use_screen else None, rounds=self.config.rounds,
            per_round=self.config.per_round, generator=generator,
        )  # fmt: skip

    # ---- the CSP model ----------------------------------------------------------------------------
    def bind_model_loader(self, load: ModelLoader) -> None:
        """How to load ``csp_model`` when it is first needed (``training.loading`` binds its own)."""
        self._loader = load

    def set_csp_model(self, model: GenerativeModel, sampler: SamplerConfig | None = None) -> None:
        """Use ``model`` (a CSP model) for the structures, with ``sampler`` as the default settings."""
        if "csp" not in model.tasks:
            raise ValueError(
                f"matgan: csp_model {self.config.csp_model!r} is a {'/'.join(model.tasks).upper()} model; "
                "it must predict structures for given compositions (a CSP model, e.g. mp_20-csp)"
            )
        model.eval()
        self._csp = (model, sampler or model.default_sampler())

    def csp_model(self) -> tuple[GenerativeModel, SamplerConfig]:
        """The CSP model and its default sampler, loaded through the bound loader on first use."""
        if self._csp is None:
            if self._loader is None:
                raise RuntimeError(
                    f"matgan: no CSP model to build structures: load this model with crystalforge's load_model "
                    f"(it resolves csp_model {self.config.csp_model!r}) or call set_csp_model"
                )
            try:
                loaded = self._loader(self.config.csp_model)
            except (KeyError, FileNotFoundError, ValueError) as exc:
                detail = exc.args[0] if exc.args else exc
                raise type(exc)(f"matgan: cannot load its csp_model {self.config.csp_model}: {detail}") from exc
            self.set_csp_model(*loaded)
        assert self._csp is not None
        return self._csp

    def default_sampler(self) -> SamplerConfig:
        """The CSP model's default sampler (the settings apply to the structure stage)."""
        if self._csp is None and self._loader is None:
            return SamplerConfig()
        return self.csp_model()[1]

    # ---- sampling ---------------------------------------------------------------------------------
    def sample(
        self, template: CrystalBatch, plan: SamplePlan, *, generator: torch.Generator | None = None
    ) -> Iterator[SampleStep]:
        """Compositions for the masked template crystals, then the CSP model's steps (module docstring)."""
        if plan.sampler.start_time > 0.0:
            raise ValueError(
                f"start_time: the {FAMILY} family draws compositions, not structures to refine; refine its "
                "outputs with a flow model instead (crystalforge refine)"
            )
        csp, _ = self.csp_model()
        row_mask = self._row_mask(plan, csp)
        generate = _generated_crystals(template)
        atoms = list(torch.split(template.atomic_numbers.cpu(), template.num_atoms.tolist()))
        wanted = torch.nonzero(generate).flatten().tolist()
        if wanted:
            counts, tally = self.draw(len(wanted), generator=generator, row_mask=row_mask)
            _log_tally(tally, self.config.screen)
            z, num = self.codec.atomic_numbers(counts)
            for i, part in zip(wanted, torch.split(z, num.tolist()), strict=True):
                atoms[i] = part
        structure_template = composition_template(template, atoms)
        constraints = tuple(TypesKept(c) for c in plan.constraints)
        stage = SamplePlan(sampler=plan.sampler, guidance=(), constraints=constraints)
        yield from csp.to(template.device).sample(structure_template, stage, generator=generator)

    def _row_mask(self, plan: SamplePlan, csp: GenerativeModel) -> Tensor | None:
        """Rows allowed by the plan's element sets and the CSP model's vocabulary (None: every row)."""
        elements = torch.tensor(self.codec.elements)
        allowed = torch.ones(self.codec.num_elements, dtype=torch.bool)
        for g in plan.guidance:
            chosen = getattr(g, "elements", None)
            if chosen is None:
                raise ValueError(
                    f"the {FAMILY} family cannot use guidance ({type(g).__name__}): its compositions come from a "
                    "generator with no denoiser prediction to steer; it takes element sets (--elements) only"
                )
            allowed &= torch.isin(elements, torch.tensor([int(v) for v in chosen], dtype=torch.int64))
        vocab = getattr(getattr(csp, "backbone", None), "type_vocabulary", None)
        if isinstance(vocab, TypeVocabulary):
            allowed &= torch.isin(elements, torch.tensor(vocab.atomic_numbers, dtype=torch.int64))
        if not bool(allowed.any()):
            raise ValueError(f"{FAMILY}: no element of the generator is allowed (element set and CSP vocabulary)")
        return None if bool(allowed.all()) else allowed


@dataclass(frozen=True)
class TypesKept:
    """A plan constraint in the structure stage, whose atom types are the composition's and stay so.

    The constraint sees the state without the types' working value and may move coordinates or the
    lattice; what it writes into the types is dropped. (``FixedComposition``, which
    ``generate --composition`` adds for a DNG model, writes type-vocabulary classes as that working
    value; a CSP model's next step would read them back as atomic numbers.)
    """

    constraint: Constraint

    def apply(self, state: CrystalBatch, t: Tensor, context: StepContext) -> CrystalBatch:
        """``constraint``'s state with the types (and their working value) of ``state``."""
        types = state.latents.get("atomic_numbers")
        bare = state.replace(latents={k: v for k, v in state.latents.items() if k != "atomic_numbers"})
        out = self.constraint.apply(bare, t, context)
        latents = {**out.latents, **({} if types is None else {"atomic_numbers": types})}
        return out.replace(atomic_numbers=state.atomic_numbers, latents=latents)


def _generated_crystals(template: CrystalBatch) -> Tensor:
    """``[B]`` bool: crystals whose types are all ``MASK_Z`` (generate); all typed: False; mixed: error."""
    is_masked = (template.atomic_numbers == MASK_Z).to(torch.int64)
    masked = segment_sum(is_masked, template.crystal_idx, template.num_crystals)  # masked atoms per crystal
    mixed = (masked > 0) & (masked < template.num_atoms)
    if bool(mixed.any()):
        i = int(torch.nonzero(mixed)[0, 0])
        raise ValueError(
            f"{FAMILY}: template crystal #{i} has some atom types given and some masked; give a whole composition "
            "or none (the generator draws whole compositions)"
        )
    return (masked > 0).cpu()


def composition_template(template: CrystalBatch, atoms: list[Tensor]) -> CrystalBatch:
    """The template with crystal ``i`` holding ``atoms[i]`` (atomic numbers): a CSP template.

    Placeholder coordinates are zeros and lattices the identity; per-crystal fields (properties,
    conditions, ids) are kept; ``fixed`` is kept only when every crystal keeps its atoms.
    """
    device, dtype = template.device, template.frac_coords.dtype
    z = torch.cat([a.to(torch.int64) for a in atoms]).to(device)
    num_atoms = torch.tensor([a.numel() for a in atoms], dtype=torch.int64, device=device)
    same = bool(torch.equal(z, template.atomic_numbers)) and bool(torch.equal(num_atoms, template.num_atoms))
    return template.replace(
        atomic_numbers=z,
        frac_coords=torch.zeros(z.numel(), 3, dtype=dtype, device=device),
        lattice=torch.eye(3, dtype=dtype, device=device).expand(len(atoms), 3, 3).clone(),
        num_atoms=num_atoms,
        fixed=template.fixed if same else None,
        latents={},
    )


def _log_tally(tally: DrawTally, screen: bool) -> None:
    logger.info(
        "%s: %d compositions from %d draws (%d with no atoms or too many, %d not charge-neutral%s, "
        "%d outside the element set)",
        FAMILY, tally.n, tally.drawn, tally.unusable, tally.screened_out, "" if screen else " (not screened)",
        tally.outside,
    )  # fmt: skip
    if tally.unscreened and screen:
        logger.warning(
            "%s: %d of %d compositions are not charge-neutral (no neutral draw within the budget)",
            FAMILY, tally.unscreened, tally.n,
        )  # fmt: skip
    if tally.masked:
        logger.warning(
            "%s: %d of %d compositions were cut down to the element set (the generator proposed none inside it "
            "within the budget; raise rounds/per_round)",
            FAMILY, tally.masked, tally.n,
        )  # fmt: skip


def resolve_matgan(config: MatGANConfig, stats: DatasetStats | None) -> MatGANConfig:
    """The config with the matrix rows (the data's elements) and sizes filled from the data."""
    if stats is None:
        return config
    return replace(
        config,
        elements=config.elements or tuple(stats.elements),
        max_count=config.max_count or stats.max_atoms,
        max_atoms=config.max_atoms or stats.max_atoms,
    )


def build_matgan(config: MatGANConfig, stats: DatasetStats | None) -> MatGAN:
    """The model of ``config`` (resolved from ``stats`` when it was not)."""
    return MatGAN(resolve_matgan(config, stats))
