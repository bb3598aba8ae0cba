"""The ``autoregressive`` family: a decoder-only transformer over crystal text (CrystaLLM, MatterGPT).

A crystal is the token sequence ``prefix + <bos> + text + <eos>``: the condition prefix
(``prefix.ConditionPrefix``: property bins, categories, the number of atoms), then the crystal in
``io.text``'s format tokenized by ``representations.tokens.CrystalTokenizer`` (header with the cell
composition, six lattice lines, one line per site). The network reads and writes only the text's
*open* tokens, each with the slot it fills (``decoding``): the format's fixed tokens (keywords,
spaces, the ``0.`` of coordinates, line ends) are written by the decoder, which halves the sequence
length. The loss is the next-token cross-entropy over the open tokens (``<eos>`` included),
averaged over tokens.

**Training.** Atoms are shown in a fresh order at every step (``atom_order``, ``sequences``);
conditions are hidden at random (``condition_dropout``: every condition of a crystal with that
probability, and each alone with it too, ``nn.conditioning.drop_conditions``) so the null tokens
learn the unconditional model.

**Sampling** (``sampler``): batched and KV-cached, one draw per token at ``temperature`` among the
``top_k`` most likely tokens the text format allows there (``decoding``). CSP (the template gives
every type): the header is the template's composition, site elements follow it, and the atoms come
back in the template's order. DNG (every type is ``MASK_Z``): the model writes the header, held to
the template's number of atoms and to the allowed elements. A sequence that does not decode is
drawn again, up to ``max_tries``; one that never does is a crystal with NaN lattice and coordinates
(the runner lists it in ``failures.csv`` and evaluation counts it invalid), so the batch keeps the
template's crystals and sizes. ``temperature``, ``top_k`` and ``max_tries`` are the config's,
adjustable on a loaded model's attributes of the same names.

**Steering.** Conditions are the prefix: a template property in ``conditions`` is read from
``template.properties``/``condition_mask``; a visible value of any other property is refused. An
element whitelist (a guidance with an ``elements`` attribute, ``sampling.composition.AllowedElements``,
``--elements``) masks element tokens. Classifier-free guidance (``interfaces.ConditionMixing``, the
``condition`` route) mixes the next-token log-probabilities of the prefix with and without the
conditions (``sampler``). Other guidance (predictor gradients), ``anti_annealing``, refinement
(``start_time``) and constraints (inpainting, motifs) are refused: they act on a denoiser's
predictions or a state in time, which this family does not have.
``SamplerConfig.steps`` does not apply. Samples are plain crystals, so they can be FlowLLM's
proposals for a flow model to refine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import Tensor, nn

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import MAX_Z, TypeVocabulary, z_to_symbol
from crystalforge.core.space_groups import CATEGORIES, SPACE_GROUP_COLUMNS
from crystalforge.core.threads import torch_threads
from crystalforge.generative.autoregressive.decoding import FormatTables, RowDecoder
from crystalforge.generative.autoregressive.prefix import ConditionPrefix, quantile_edges
from crystalforge.generative.autoregressive.sampler import (
    assemble_batch,
    generate_crystals,
    row_composition,
    template_rows,
)
from crystalforge.generative.autoregressive.sequences import (
    IGNORE,
    AtomOrder,
    length_groups,
    order_atoms,
    pad,
    sequence_bound,
    training_sequences,
)
from crystalforge.generative.autoregressive.transformer import CrystalGPT
from crystalforge.generative.interfaces import ConditionMixing, SamplePlan, SamplerConfig, SampleStep
from crystalforge.generative.joint_config import check_categories
from crystalforge.nn.conditioning import drop_conditions, with_categories
from crystalforge.representations.tokens import CrystalText, CrystalTokenizer

__all__ = ["FAMILY", "AutoregressiveConfig", "CrystalAutoregressive", "build_autoregressive", "resolve_autoregressive"]

logger = logging.getLogger(__name__)

FAMILY = "autoregressive"


@dataclass(frozen=True)
class AutoregressiveConfig:
    """Options of the ``autoregressive`` family (``model:`` in a training YAML).

    Attributes:
        dim, layers, heads, dropout: the transformer (``transformer.CrystalGPT``).
        length_decimals, angle_decimals, coord_decimals: precision of the text (``io.text.CrystalText``).
        atom_order: training order of the sites: ``grouped`` (by element, both orders drawn), ``random``, ``data``.
        properties: continuous conditions (a prefix token each: the value's bin, or null).
        categories: categorical conditions (``space_group``, ``crystal_system``).
        property_bins: bins per property (equal shares of the training data).
        condition_dropout: training hides all conditions with this probability, and each alone too.
        temperature, top_k, max_tries: sampling (0 ``top_k``: every allowed token; 0 temperature: greedy).
        decode_threads: torch CPU threads while sampling on the CPU (0: leave torch's setting).
        tokens_per_group: training runs a batch in groups of similar length of at most this many
            padded positions (less compute on padding; the loss is the whole batch's).
        elements, max_atoms, max_elements, bin_edges, block_size: filled from the training data
            by ``resolve_autoregressive`` (the vocabulary, the size and kinds of the largest crystal,
            each property's interior bin edges, the longest sequence).

    """

    dim: int = 128
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0  # short CPU runs underfit; dropout also costs ~20% of a CPU step
    length_decimals: int = 2
    angle_decimals: int = 1
    coord_decimals: int = 3
    atom_order: AtomOrder = "grouped"
    properties: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    property_bins: int = 10
    condition_dropout: float = 0.1
    temperature: float = 1.0
    top_k: int = 0
    max_tries: int = 5
    decode_threads: int = 1
    tokens_per_group: int = 8192
    elements: tuple[int, ...] = ()
    max_atoms: int = 0
    max_elements: int = 0
    bin_edges: dict[str, tuple[float, ...]] = field(default_factory=dict)
    block_size: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1 or self.layers < 1 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"dim, layers, heads must be >= 1 with dim divisible by heads, got {self.dim}, "
                             f"{self.layers}, {self.heads}")  # fmt: skip
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"dropout and condition_dropout must be in [0, 1), got {self.dropout}, "
                             f"{self.condition_dropout}")  # fmt: skip
        if self.atom_order not in ("grouped", "random", "data"):
            raise ValueError(f"atom_order must be 'grouped', 'random' or 'data', got {self.atom_order!r}")
        if not self.temperature >= 0 or self.top_k < 0 or self.max_tries < 1 or self.decode_threads < 0:
            raise ValueError(f"need temperature >= 0, top_k >= 0, max_tries >= 1, decode_threads >= 0, got "
                             f"{self.temperature}, {self.top_k}, {self.max_tries}, {self.decode_threads}")  # fmt: skip
        if self.property_bins < 2:
            raise ValueError(f"property_bins must be >= 2, got {self.property_bins}")
        names = self.properties + self.categories
        if len(set(names)) != len(names):
            raise ValueError(f"conditions have duplicates: {names}")
        unknown = sorted(set(self.categories) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categorical condition(s) {unknown} (known: {', '.join(CATEGORIES)})")
        bad = [z for z in self.elements if not 1 <= z <= MAX_Z]
        if bad:
            raise ValueError(f"elements: {bad} are not atomic numbers 1..{MAX_Z}")
        if min(self.length_decimals, self.angle_decimals, self.coord_decimals) < 1:
            raise ValueError("the text's decimals must be >= 1 (the grammar reads every number as 'integer.decimals')")
        _ = self.text  # CrystalText checks the rest

    @property
    def text(self) -> CrystalText:
        """The text format of the sequences."""
        return CrystalText(self.length_decimals, self.angle_decimals, self.coord_decimals)

    @property
    def resolved(self) -> bool:
        """Whether every data-derived field is filled."""
        return bool(self.elements and self.max_atoms and self.block_size) and set(self.properties) <= set(
            self.bin_edges
        )


def resolve_autoregressive(config: AutoregressiveConfig, stats: DatasetStats | None) -> AutoregressiveConfig:
    """The config with the vocabulary, sizes, bin edges and block size read from the training statistics."""
    if stats is None:
        if not config.resolved:
            raise ValueError("the autoregressive config is not resolved and no dataset statistics were given")
        return config
    check_categories(config.categories, stats)
    edges = dict(config.bin_edges)
    for name in config.properties:
        if name not in edges:
            edges[name] = quantile_edges(stats, name, config.property_bins)
    max_atoms = config.max_atoms or stats.max_atoms
    max_elements = config.max_elements or max(1, len(stats.num_elements_hist) - 1)
    prefix_length = len(config.properties) + len(config.categories) + 1
    bound = sequence_bound(config.text, max_atoms=max_atoms, max_elements=max_elements, prefix_length=prefix_length)
    return replace(
        config,
        elements=config.elements or tuple(stats.elements),
        max_atoms=max_atoms,
        max_elements=max_elements,
        bin_edges={p: edges[p] for p in config.properties},
        block_size=config.block_size or bound,
    )


def build_autoregressive(config: AutoregressiveConfig, stats: DatasetStats | None) -> CrystalAutoregressive:
    """The model of ``config`` (resolved from ``stats`` first where it is not)."""
    return CrystalAutoregressive(config if config.resolved else resolve_autoregressive(config, stats))


class CrystalAutoregressive(nn.Module):
    """The family's ``GenerativeModel`` (see the module docstring)."""

    tasks = ("csp", "dng")

    def __init__(self, config: AutoregressiveConfig) -> None:
        super().__init__()
        if not config.resolved:
            raise ValueError("resolve the config first (resolve_autoregressive): elements/max_atoms/block_size unset")
        self.config = config
        self.tokenizer = CrystalTokenizer(config.text)
        self.tables = FormatTables(self.tokenizer)
        edges = {p: config.bin_edges[p] for p in config.properties}
        self.prefix = ConditionPrefix(self.tokenizer.vocab_size, config.max_atoms, edges, config.categories)
        self.backbone = CrystalGPT(
            self.prefix.end, config.block_size, num_slots=self.tables.num_slots, dim=config.dim, heads=config.heads,
            layers=config.layers, dropout=config.dropout,
            type_vocabulary=TypeVocabulary(tuple(sorted(config.elements))),
        )  # fmt: skip
        self.temperature = config.temperature
        self.top_k = config.top_k
        self.max_tries = config.max_tries
        self.decode_threads = config.decode_threads

    @property
    def conditions(self) -> tuple[str, ...]:
        """The conditions of the prefix (properties, then categories)."""
        return self.prefix.names

    def default_sampler(self) -> SamplerConfig:
        """One step (the settings of an integrator do not apply)."""
        return SamplerConfig(steps=1)

    def with_conditions(self, batch: CrystalBatch) -> CrystalBatch:
        """``batch`` with the categories it implies filled in (crystal system from space group)."""
        return with_categories(batch, self.config.categories) if self.config.categories else batch

    # ---- training -------------------------------------------------------------------------------
    def loss(self, batch: CrystalBatch) -> dict[str, Tensor]:
        """``{"loss": mean next-token cross-entropy over the text, "perplexity"}`` of one data batch."""
        if self.training:
            batch = order_atoms(batch, self.config.atom_order)
        if self.conditions:
            batch = self.with_conditions(batch)
            if self.training:
                batch = drop_conditions(batch, self.conditions, self.config.condition_dropout)
        sequences = training_sequences(
            batch, self.tables, self.prefix.encode(batch), block_size=self.backbone.block_size
        )
        device = batch.device
        total = torch.zeros((), device=device)
        count = 0
        for group in length_groups([len(s.inputs) for s in sequences], self.config.tokens_per_group):
            chosen = [sequences[i] for i in group]
            inputs = pad([s.inputs for s in chosen], self.tokenizer.pad_id, device)
            slots = pad([s.slots for s in chosen], 0, device)
            targets = pad([s.targets for s in chosen], IGNORE, device)
            logits = self.backbone(inputs, slots)
            total = total + F.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            count += int((targets != IGNORE).sum())
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": torch.exp(loss.detach())}

    # ---- sampling -------------------------------------------------------------------------------
    def check_plan(self, plan: SamplePlan) -> tuple[int, ...]:
        """The elements DNG may use under ``plan``; ``ValueError`` for what the family cannot do."""
        if plan.sampler.anti_annealing is not None:
            raise ValueError(f"anti_annealing: the {FAMILY} family has no flow (velocity) fields to scale")
        if plan.sampler.start_time > 0.0:
            raise ValueError(
                f"start_time: the {FAMILY} family writes crystals from scratch and cannot refine given ones; "
                "use it as the proposer and refine its samples with a flow model"
            )
        if plan.constraints:
            names = ", ".join(type(c).__name__ for c in plan.constraints)
            raise ValueError(
                f"the {FAMILY} family cannot apply constraints ({names}): it writes a crystal token by token, "
                "with no state in time to rewrite; give a composition (CSP) or an element set (--elements)"
            )
        allowed = set(self.config.elements)
        for guidance in plan.guidance:
            if isinstance(guidance, ConditionMixing):
                continue  # applied to the next-token probabilities (``mixing``)
            whitelist = getattr(guidance, "elements", None)
            if not isinstance(whitelist, (tuple, list)):
                raise ValueError(
                    f"the {FAMILY} family cannot use guidance ({type(guidance).__name__}): it has no denoiser "
                    "prediction to steer; condition on properties it was trained with (--condition), or give "
                    "an element set (--elements)"
                )
            outside = sorted(set(int(z) for z in whitelist) - set(self.config.elements))
            if outside:
                symbols = ", ".join(z_to_symbol(z) for z in outside)
                raise ValueError(f"element(s) {symbols} are not in the vocabulary of this {FAMILY} model")
            allowed &= {int(z) for z in whitelist}
        return tuple(sorted(allowed))

    def start_tokens(self, template: CrystalBatch) -> Tensor:
        """``[B, P + 1]``: each crystal's condition prefix and ``<bos>``."""
        bos = torch.full((template.num_crystals, 1), self.tokenizer.bos_id, dtype=torch.int64, device=template.device)
        return torch.cat([self.prefix.encode(template), bos], dim=1)

    def mixing(self, plan: SamplePlan, template: CrystalBatch) -> tuple[Tensor | None, float]:
        """The start tokens with the guided conditions hidden and the weight ``w``; ``(None, 1)`` without guidance."""
        mixers = [g for g in plan.guidance if isinstance(g, ConditionMixing)]
        if not mixers:
            return None, 1.0
        if len(mixers) > 1:
            raise ValueError(f"the {FAMILY} family takes one classifier-free guidance, got {len(mixers)}")
        names = [n for n in (mixers[0].conditions or tuple(template.properties)) if n in template.properties]
        if not names:
            return None, 1.0
        hidden = {n: torch.zeros_like(template.properties[n], dtype=torch.bool) for n in names}
        masked = template.replace(condition_mask={**template.condition_mask, **hidden})
        return self.start_tokens(masked), float(mixers[0].scale)

    def check_conditions(self, template: CrystalBatch) -> None:
        """Refuse a visible template property the model was not trained to read."""
        known = set(self.conditions)
        if known & set(CATEGORIES):
            known |= set(SPACE_GROUP_COLUMNS)
        for name, value in template.properties.items():
            if name in known or value.dim() != 1:
                continue
            shown = ~torch.isnan(value)
            mask = template.condition_mask.get(name)
            if bool((shown & mask.to(torch.bool) if mask is not None else shown).any()):
                have = ", ".join(self.conditions) or "none: it is unconditional"
                raise ValueError(
                    f"this {FAMILY} model cannot be conditioned on {name!r} (its conditions: {have}); "
                    "hide the value (condition_mask False) or train with model.properties"
                )

    def sample(
        self, template: CrystalBatch, plan: SamplePlan, *, generator: torch.Generator | None = None
    ) -> Iterator[SampleStep]:
        """One step: every crystal of the template written by the transformer (see the module docstring)."""
        allowed = self.check_plan(plan)
        template = self.with_conditions(template)
        self.check_conditions(template)
        rows = template_rows(template)
        ids = template.material_ids
        names = [str(m) for m in ids] if ids else [f"crystal {i}" for i in range(len(rows))]
        compositions = [row_composition(z, name, allowed) for z, name in zip(rows, names, strict=True)]
        start = self.start_tokens(template)
        unconditional, scale = self.mixing(plan, template)

        def new_decoder(i: int) -> RowDecoder:
            return RowDecoder(self.tables, num_atoms=len(rows[i]), composition=compositions[i], elements=allowed)

        was_training = self.training
        threads = self.decode_threads if self.network_device.type == "cpu" else 0
        self.eval()
        try:
            with torch_threads(threads):
                crystals, reasons = generate_crystals(
                    self.backbone, self.tables, start.to(self.network_device), new_decoder, names=names,
                    temperature=self.temperature, top_k=self.top_k, max_tries=self.max_tries, generator=generator,
                    unconditional=None if unconditional is None else unconditional.to(self.network_device),
                    guidance_scale=scale,
                )  # fmt: skip
        finally:
            self.train(was_training)
        if reasons:
            first = min(reasons)
            logger.warning(
                "%s: %d of %d sequences did not decode in %d tries; returned as NaN cells (counted invalid). %s: %s",
                FAMILY, len(reasons), len(rows), self.max_tries, names[first], reasons[first],
            )  # fmt: skip
        yield SampleStep(index=0, t=1.0, state=assemble_batch(template, rows, crystals))

    @property
    def network_device(self) -> torch.device:
        """Where the network's weights live (token ids go there)."""
        return self.backbone.token_embedding.weight.device
