"""PeriodicMP forward / forward+backward time on random mp_20-sized batches (no data needed).

    python benchmarks/bench_backbone.py [--preset small] [--batch 256] [--repeats 3] [--device cpu] [--mp20]

Default: random crystals with 1..20 atoms (uniform: mean n² = 143.5, mp_20 test's is ~135),
random Z in 1..100, cells of ~20 Å³/atom with random shear. ``--mp20``: the first ``--batch``
structures of the mp_20 test split instead (needs the benchmark data). float32; times are
medians over ``--repeats`` after one warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import data_root, machine


def random_batch(num_crystals: int, *, max_atoms: int, generator: torch.Generator):
    from crystalforge.core.batch import CrystalBatch

    n = torch.randint(1, max_atoms + 1, (num_crystals,), generator=generator)
    side = (n.double() * 20.0) ** (1.0 / 3.0)
    shear = torch.eye(3, dtype=torch.float64) + 0.15 * torch.randn(num_crystals, 3, 3, generator=generator)
    lattice = side[:, None, None] * shear
    flip = torch.linalg.det(lattice) < 0
    lattice[flip] = -lattice[flip]
    total = int(n.sum())
    return CrystalBatch(
        atomic_numbers=torch.randint(1, 101, (total,), generator=generator),
        frac_coords=torch.rand(total, 3, generator=generator, dtype=torch.float64),
        lattice=lattice,
        num_atoms=n,
    ).to(dtype=torch.float32)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=("tiny", "small"), default="small")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--max-atoms", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mp20", action="store_true", help="use mp_20 test structures instead of random ones")
    args = parser.parse_args()
    from crystalforge.nn.backbones import PeriodicMP, PeriodicMPConfig

    torch.manual_seed(0)
    config = getattr(PeriodicMPConfig, args.preset)()
    model = PeriodicMP(config).to(args.device)
    gen = torch.Generator().manual_seed(0)
    if args.mp20:
        from crystalforge import CrystalBatch, load_dataset

        crystals = list(load_dataset("mp_20", "test", root=data_root()))[: args.batch]
        batch = CrystalBatch.collate(crystals, dtype=torch.float32)
    else:
        batch = random_batch(args.batch, max_atoms=args.max_atoms, generator=gen)
    batch.validate()
    batch = batch.to(args.device)
    t = torch.rand(batch.num_crystals, device=args.device)
    n = batch.num_atoms
    pairs = int((n * n).sum()) if config.self_loops else int((n * n - n).sum())

    def forward() -> None:
        with torch.no_grad():
            model(batch, t)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        out = model(batch, t)
        loss = out.frac_coords.square().mean() + out.atomic_numbers.square().mean() + out.lattice.square().mean()
        loss.backward()

    rows = []
    for name, fn in (("forward (no grad)", forward), ("forward + backward", forward_backward)):
        fn()  # warm-up
        times = [timed(fn, args.device) for _ in range(args.repeats)]
        rows.append((name, statistics.median(times)))
    peak = ""
    if args.device.startswith("cuda"):
        peak = f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    print(
        f"machine: {machine()}; device={args.device}; torch threads={torch.get_num_threads()}; "
        f"crystals={'mp_20 test' if args.mp20 else 'random'}; "
        f"preset={args.preset} (hidden {config.hidden}, {config.layers} layers, "
        f"{model.num_parameters():,} parameters); batch={batch.num_crystals} crystals, "
        f"{int(n.sum())} atoms, {pairs} pairs; repeats={args.repeats}{peak}"
    )
    print("| pass | ms / batch | crystals / s |")
    print("|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec * 1e3:.0f} | {batch.num_crystals / sec:.0f} |")


if __name__ == "__main__":
    main()
