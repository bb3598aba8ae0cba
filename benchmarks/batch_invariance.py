"""Does a crystal's network output depend on the batch it is evaluated in? (CPU, float32)

    python benchmarks/batch_invariance.py [--models mp_20-dng mp_20-csp perov_5-dng] [--json OUT.json]

Two measurements, both on this machine's torch CPU kernels:

1. ``nn.Linear`` alone: the largest difference between the rows of a [3000, d] input multiplied at
   once and the first M rows multiplied alone, for M in 1 … 2048 and the widths the shipped
   backbones use. A nonzero entry means a matrix product's row depends on how many rows share it.
2. Each shipped model's ``predict`` (the backbone on a noisy state at t = 0.4): the first m crystals
   of a 256-crystal prior evaluated inside the whole batch and alone (m = 1 … 200); the largest
   difference per field. Sampling integrates this prediction many times, so a difference here reaches the output.

Why it matters: the generation runner seeds chunk ``k`` with ``seed + k``. Even with one random
stream per structure, a structure's bytes would still depend on which others share its chunk
whenever (2) is not exactly zero; RELIABILITY.md ("Figure 5") reports the result.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def linear_rows(widths: list[int], sizes: list[int], total: int = 3000) -> dict[str, dict[str, float]]:
    """Per width: M → the largest |row of the whole product − row of the M-row product|."""
    out: dict[str, dict[str, float]] = {}
    for d in widths:
        torch.manual_seed(d)
        layer, x = torch.nn.Linear(d, d), torch.randn(total, d)
        with torch.no_grad():
            whole = layer(x)
            out[str(d)] = {str(m): float((whole[:m] - layer(x[:m])).abs().max()) for m in sizes}
    return out


def model_rows(name: str, sizes: list[int], batch: int = 256) -> dict[str, dict[str, float]]:
    """Per size m: field → the largest difference of the first m crystals' predictions, inside the batch vs alone."""
    from crystalforge.generative.interfaces import model_dtype
    from crystalforge.sampling.templates import template_from_num_atoms
    from crystalforge.training.loading import load_model

    model = load_model(name).model.eval()
    torch.manual_seed(0)
    counts = [int(n) for n in torch.randint(2, 21, (batch,))]
    state = model.sample_prior(  # type: ignore[attr-defined]
        template_from_num_atoms(counts, dtype=model_dtype(model)), torch.Generator().manual_seed(1)
    )
    t = torch.full((batch,), 0.4, dtype=state.frac_coords.dtype)
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        whole = model.predict(state, t)  # type: ignore[attr-defined]
        for alone in sizes:
            part = model.predict(state.index_select(list(range(alone))), t[:alone])  # type: ignore[attr-defined]
            atoms, row = sum(counts[:alone]), {}
            for field in ("frac_coords", "lattice", "atomic_numbers"):
                a, b = getattr(whole, field), getattr(part, field)
                if a is None or b is None:
                    continue
                rows = atoms if a.shape[0] == sum(counts) else alone
                row[field] = float((a[:rows] - b).abs().max())
            out[str(alone)] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mp_20-dng", "mp_20-csp", "perov_5-dng"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [1, 2, 4, 8, 12, 16, 17, 32, 37, 64, 100, 128, 256, 257, 512, 1024, 2048]
    chunks = [1, 8, 16, 37, 64, 100, 128, 200]
    result = {
        "threads": args.threads,
        "torch": torch.__version__,
        "linear": linear_rows([64, 128, 256, 512], sizes),
        "models": {name: model_rows(name, chunks) for name in args.models},
    }
    print("nn.Linear: largest row difference, whole [3000, d] product vs the first M rows alone")
    print("d \\ M  " + " ".join(f"{m:>8}" for m in sizes))
    for d, row in result["linear"].items():
        print(f"{d:>6} " + " ".join(f"{row[str(m)]:8.1e}" for m in sizes))
    print("model predictions: the first m crystals inside a batch of 256 vs alone (largest difference)")
    for name, per_size in result["models"].items():
        for m, fields in per_size.items():
            print(f"  {name}, m = {m}: " + ", ".join(f"{f} {v:.1e}" for f, v in fields.items()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
