"""Batched, KV-cached sampling of crystal text, with retries for sequences that do not decode.

``decode_batch`` runs all sequences of a batch in lockstep: one prefill of the shared prefix, then
one cached forward per open token (the format's fixed tokens are written by the decoders). Before
each draw the format constraints (``decoding.RowDecoder``) set every disallowed logit to ``-inf``;
the draw is ``softmax(logits / temperature)`` over the ``top_k`` largest (0: all), or the arg-max
at ``temperature = 0``. A sequence leaves the batch (and the cache) after its ``<eos>``; one that
reaches the model's last position unfinished fails.

Classifier-free guidance (``unconditional`` given, weight ``w = guidance_scale``): a second cache
runs the same tokens after the prefix with the conditions hidden, and the draw uses
``log p_u + w·(log p_c − log p_u)`` (MatterGPT-style conditioning sharpened as in diffusion models;
``w = 1`` is the conditional model alone and needs no second pass).

``generate_crystals`` decodes the text of each finished sequence (``io.text`` via the tokenizer).
A sequence that fails (no ``<eos>``, or text that is not a crystal: angles that form no cell, …) is
sampled again, up to ``max_tries`` draws in all; one that never succeeds is returned as ``None``
with the reason of its last failure.

``template_rows``/``row_composition`` read a template (CSP rows give every type, DNG rows none);
``assemble_batch`` writes the crystals back into it: CSP atoms in the template's order, a crystal
that never decoded as NaN lattice and coordinates of the template's size.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.elements import MASK_Z, z_to_symbol
from crystalforge.core.errors import CrystalError
from crystalforge.generative.autoregressive.decoding import FormatTables, RowDecoder
from crystalforge.generative.autoregressive.transformer import CrystalGPT

__all__ = [
    "assemble_batch", "choose_tokens", "decode_batch", "generate_crystals", "row_composition",
    "template_rows",
]  # fmt: skip


def choose_tokens(
    logits: Tensor,  # [b, V]
    allowed: Tensor,  # [b, V] bool
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:  # [b] int64
    """One token per row among the allowed ones (see the module docstring)."""
    scores = logits.float().masked_fill(~allowed, float("-inf"))
    if temperature <= 0:
        return scores.argmax(dim=-1)
    scores = scores / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def decode_batch(
    network: CrystalGPT,
    start: Tensor,  # [b, P + 1] prefix and <bos>
    decoders: Sequence[RowDecoder],
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    unconditional: Tensor | None = None,  # [b, P + 1]: the prefix with the conditions hidden
    guidance_scale: float = 1.0,
) -> None:
    """Generate every sequence until its ``<eos>`` or the last position (tokens land in the decoders).

    Finished sequences stay in the cache (fed ``<pad>``) until a quarter of its rows are finished;
    then the cache is compacted to the running ones (a copy of the cache, so not at every ``<eos>``).
    """
    cache = network.new_cache(len(decoders))
    slots = torch.zeros_like(start)
    slots[:, -1] = torch.tensor([d.slot for d in decoders], dtype=torch.int64, device=start.device)
    logits = network(start, slots, cache)[:, -1]
    u_cache = None  # the unconditioned sequences' cache, only when guidance mixes them in
    if unconditional is not None and guidance_scale != 1.0:
        u_cache = network.new_cache(len(decoders))
        logits = _mix(network(unconditional, slots, u_cache)[:, -1], logits, guidance_scale)
    rows = list(range(len(decoders)))  # the decoder of each cache row
    pad = decoders[0].t.pad if decoders else 0
    while True:
        allowed = np.zeros(tuple(logits.shape), dtype=bool)
        for j, row in enumerate(rows):
            allowed[j, decoders[row].allowed()] = True
        mask = torch.from_numpy(allowed).to(logits.device)
        tokens = choose_tokens(logits, mask, temperature=temperature, top_k=top_k, generator=generator)
        running = []
        for j, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            if not decoders[row].finished:
                decoders[row].push(token, check=False)
                if not decoders[row].finished:
                    running.append(j)
        if not running or cache.length >= cache.capacity:
            return
        if len(running) <= 0.75 * len(rows):
            keep = torch.tensor(running, dtype=torch.int64, device=tokens.device)
            cache.keep(keep)
            if u_cache is not None:
                u_cache.keep(keep)
            tokens = tokens.index_select(0, keep)
            rows = [rows[j] for j in running]
        slots = torch.tensor([[decoders[row].slot] for row in rows], dtype=torch.int64, device=tokens.device)
        tokens = torch.where(slots[:, 0] > 0, tokens, pad)  # finished rows read <pad>
        logits = network(tokens[:, None], slots, cache)[:, -1]
        if u_cache is not None:
            logits = _mix(network(tokens[:, None], slots, u_cache)[:, -1], logits, guidance_scale)


def _mix(unconditional: Tensor, conditional: Tensor, w: float) -> Tensor:
    """``log p_u + w·(log p_c − log p_u)`` over the vocabulary (classifier-free guidance)."""
    u = torch.log_softmax(unconditional.float(), dim=-1)
    return u + w * (torch.log_softmax(conditional.float(), dim=-1) - u)


def generate_crystals(
    network: CrystalGPT,
    tables: FormatTables,
    start: Tensor,  # [B, P + 1]
    new_decoder: Callable[[int], RowDecoder],
    *,
    names: Sequence[str],
    temperature: float = 1.0,
    top_k: int = 0,
    max_tries: int = 5,
    generator: torch.Generator | None = None,
    unconditional: Tensor | None = None,  # [B, P + 1], for classifier-free guidance
    guidance_scale: float = 1.0,
) -> tuple[list[Crystal | None], dict[int, str]]:
    """Crystals of every row (``None`` where all ``max_tries`` draws failed) and each failure's last reason.

    ``new_decoder(i)`` makes a fresh ``RowDecoder`` for row ``i``; ``names[i]`` labels it in errors.
    """
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    results: list[Crystal | None] = [None] * start.shape[0]
    reasons: dict[int, str] = {}
    pending = list(range(start.shape[0]))
    for _ in range(max_tries):
        decoders = [new_decoder(i) for i in pending]
        rows = torch.tensor(pending, dtype=torch.int64, device=start.device)
        decode_batch(
            network, start.index_select(0, rows), decoders, temperature=temperature, top_k=top_k, generator=generator,
            unconditional=None if unconditional is None else unconditional.index_select(0, rows),
            guidance_scale=guidance_scale,
        )  # fmt: skip
        still = []
        for i, decoder in zip(pending, decoders, strict=True):
            if not decoder.finished:
                reasons[i] = f"no <eos> within the model's {network.block_size} positions"
                still.append(i)
                continue
            try:
                results[i] = tables.tokenizer.decode_crystal(decoder.tokens, source=names[i])
                reasons.pop(i, None)
            except CrystalError as exc:
                reasons[i] = exc.problem
                still.append(i)
        pending = still
        if not pending:
            break
    return results, reasons


# ---- templates in, batches out -------------------------------------------------------------------
def template_rows(template: CrystalBatch) -> list[np.ndarray]:
    """Each template crystal's atomic numbers ``[n]`` (``MASK_Z`` where generated)."""
    z = template.atomic_numbers.cpu().numpy().astype(np.int64)
    bounds = np.cumsum([0, *template.num_atoms.tolist()])
    return [z[bounds[i] : bounds[i + 1]] for i in range(template.num_crystals)]


def row_composition(z: np.ndarray, name: str, allowed: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """A CSP row's ``[(Z, count)]`` in order of first appearance; None for DNG; ``ValueError`` for a mix."""
    masked = z == MASK_Z
    if masked.all():
        return None
    if masked.any():
        raise ValueError(f"{name}: some atom types are given and some are not; give all (CSP) or none (DNG)")
    outside = sorted(set(z.tolist()) - set(allowed))
    if outside:
        symbols = ", ".join(z_to_symbol(v) for v in outside)
        raise ValueError(f"{name}: element(s) {symbols} are outside the model's vocabulary or the allowed set")
    return list(Counter(z.tolist()).items())


def _in_order(crystal: Crystal, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(atomic_numbers, frac_coords)`` of ``crystal`` permuted to read as ``order`` (same multiset)."""
    source = np.argsort(crystal.atomic_numbers, kind="stable")
    perm = np.empty_like(source)
    perm[np.argsort(order, kind="stable")] = source
    return crystal.atomic_numbers[perm], crystal.frac_coords[perm]


def assemble_batch(template: CrystalBatch, rows: list[np.ndarray], crystals: list[Crystal | None]) -> CrystalBatch:
    """The template with each crystal's generated atoms and lattice (NaN geometry where none)."""
    z_parts, frac_parts, lattices = [], [], []
    for z, crystal in zip(rows, crystals, strict=True):
        if crystal is None:
            z_parts.append(z)
            frac_parts.append(np.full((len(z), 3), math.nan))
            lattices.append(np.full((3, 3), math.nan))
            continue
        if (z != MASK_Z).all():
            atoms, frac = _in_order(crystal, z)
        else:
            atoms, frac = crystal.atomic_numbers, crystal.frac_coords
        z_parts.append(atoms)
        frac_parts.append(frac)
        lattices.append(crystal.lattice)
    dtype, device = template.frac_coords.dtype, template.device
    return template.replace(
        atomic_numbers=torch.from_numpy(np.concatenate(z_parts).astype(np.int64)).to(device),
        frac_coords=torch.from_numpy(np.concatenate(frac_parts)).to(device, dtype),
        lattice=torch.from_numpy(np.stack(lattices)).to(device, dtype),
        latents={},
    )
