"""``crystalforge train``: train (or resume) a generative model from a YAML config."""

from __future__ import annotations

import argparse
import textwrap

from crystalforge.cli.options import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``."""
    p = add_parser(
        subparsers,
        "train",
        help="train (or resume) a generative model from a YAML config",
        epilog=textwrap.dedent(
            """\
            Rerunning the same command with the same --out resumes from <out>/last.ckpt (the last
            finished epoch), after a crash, kill -9, Ctrl-C (exit status 1) or SIGTERM (143) alike.
            The exported <out>/model.pt (EMA weights, config, dataset statistics) is what
            `crystalforge generate --model <out>/model.pt` loads.
            Several processes (DDP) by configuration: trainer.devices (per node), trainer.num_nodes,
            trainer.strategy; data.batch_size is per process. SLURM and torchrun: docs/scale.md.

            examples:
              crystalforge train configs/perov_5-csp-flow.yaml --out runs/perov_5-csp
              crystalforge train configs/mp_20-dng-flow.yaml --out runs/mp20 --set trainer.max_epochs=200
              crystalforge train configs/perov_5-csp-flow.yaml --out runs/gpu --set trainer.devices=2
              srun crystalforge train configs/mp_20-dng-flow.yaml --out runs/mp20-ddp \\
                  --set trainer.devices=4 --set trainer.num_nodes=2   # sbatch --nodes=2 --ntasks-per-node=4"""
        ),
    )
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, model.pt)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Train; a missing Lightning stops the command before any config or data is read."""
    from crystalforge import api

    api.require("lightning", "training (crystalforge train)")
    path = api.train(args.config, args.out, overrides=args.set or ())
    print(f"wrote {path}")
    return 0
