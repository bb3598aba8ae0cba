"""Drawing compositions from a trained generator, with rejection of unusable and screened-out ones.

A composition is *usable* when it holds between 1 and ``max_atoms`` atoms (the row-wise argmax can
give an empty matrix, or more atoms than any training cell). Each round draws ``per_round`` latent
vectors for every crystal still without a composition; a candidate is ideal when

- it passes ``screen`` (charge neutrality, ``screening.is_charge_neutral``; None: no screen), and
- with an element set (``row_mask``), the generator's own composition lies inside it: rejection
  sampling, so the kept compositions are ones the generator proposes, not amputated ones.

A crystal takes its first ideal candidate. After ``rounds`` rounds a crystal without one takes its
best usable candidate, ranked by passing the screen first and lying inside the set second; a
candidate outside the set is *masked* (its other elements' counts set to 0) so an element set always
holds. ``DrawTally`` counts both kinds of compromise. A crystal without any usable candidate is a
``RuntimeError`` (an untrained or collapsed generator). Latents come from ``generator``, so a seed
fixes the compositions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from crystalforge.generative.gan.encoding import CompositionCodec
from crystalforge.generative.gan.networks import Generator

__all__ = ["DrawTally", "draw_compositions", "draw_counts"]

Screen = Callable[[Mapping[int, int]], bool]
"""``{Z: count} → keep?``"""

_NONE = 4  # rank of "no usable candidate yet"; ranks 0..3 are 2·(fails screen) + (outside the set)


@dataclass(frozen=True)
class DrawTally:
    """What drawing ``n`` compositions took: candidates drawn, rejections, and compromises kept."""

    n: int
    drawn: int
    unusable: int  # candidates with no atoms, or more than max_atoms
    screened_out: int  # usable candidates that failed the screen
    outside: int  # usable candidates with elements outside the element set
    unscreened: int  # crystals that kept a composition failing the screen
    masked: int  # crystals that kept a masked composition (the generator's own left the set)


def draw_compositions(
    net: Generator,
    codec: CompositionCodec,
    n: int,
    *,
    max_atoms: int,
    row_mask: Tensor | None = None,
    screen: Screen | None = None,
    rounds: int = 20,
    per_round: int = 8,
    batch_size: int = 8192,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, DrawTally]:
    """Counts ``[n, E]`` of ``n`` drawn compositions and the tally (see the module docstring).

    ``row_mask [E]`` (bool): the element set, as the rows allowed to hold atoms (None: every row).
    """
    if n < 0 or rounds < 1 or per_round < 1:
        raise ValueError(f"need n >= 0, rounds >= 1, per_round >= 1; got {n}, {rounds}, {per_round}")
    keep = None if row_mask is None else row_mask.cpu().to(torch.int64)
    best = torch.zeros(n, codec.num_elements, dtype=torch.int64)
    rank = torch.full((n,), _NONE, dtype=torch.int64)
    pending = torch.arange(n)
    drawn = unusable = screened_out = outside = 0
    for _ in range(rounds):
        if pending.numel() == 0:
            break
        m = pending.numel()
        own = draw_counts(net, m * per_round, batch_size=batch_size, generator=generator).reshape(m, per_round, -1)
        kept = own if keep is None else own * keep
        inside = (kept == own).all(-1)  # [m, per_round]
        sizes = kept.sum(-1)
        usable = (sizes >= 1) & (sizes <= max_atoms)
        drawn += m * per_round
        unusable += int((~usable).sum())
        outside += int((usable & ~inside).sum())
        for i, crystal in enumerate(pending.tolist()):
            for r in torch.nonzero(usable[i]).flatten().tolist():
                passes = screen is None or screen(codec.composition(kept[i, r]))
                screened_out += not passes
                candidate = 2 * (not passes) + int(not bool(inside[i, r]))
                if candidate < rank[crystal]:
                    rank[crystal], best[crystal] = candidate, kept[i, r]
                if candidate == 0:
                    break
        pending = pending[rank[pending] > 0]
    if bool((rank == _NONE).any()):
        missing = int((rank == _NONE).sum())
        raise RuntimeError(
            f"matgan: {missing} of {n} crystals got no composition with 1..{max_atoms} atoms in "
            f"{rounds * per_round} draws each; the generator is untrained or collapsed"
            + (", or proposes too little within the element set" if row_mask is not None else "")
        )
    tally = DrawTally(
        n=n, drawn=drawn, unusable=unusable, screened_out=screened_out, outside=outside,
        unscreened=int((rank >= 2).sum()), masked=int((rank % 2 == 1).sum()),
    )  # fmt: skip
    return best, tally


@torch.no_grad()
def draw_counts(
    net: Generator,
    m: int,
    *,
    batch_size: int = 8192,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Counts ``[m, E]`` (CPU int64) of ``m`` generator draws (no rejection), in chunks of ``batch_size``."""
    device = next(net.parameters()).device
    dtype = next(net.parameters()).dtype
    out = []
    rng_device = generator.device if generator is not None else device
    for start in range(0, m, batch_size):
        size = min(batch_size, m - start)
        z = torch.randn(size, net.latent_dim, generator=generator, device=rng_device, dtype=dtype).to(device)
        out.append(net(z)[1].cpu())
    return torch.cat(out) if out else torch.zeros(0, net.num_elements, dtype=torch.int64)
