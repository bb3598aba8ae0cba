"""``crystalforge train-predictor``: a property-predictor ensemble on a benchmark or your own structures."""

from __future__ import annotations

import argparse
import sys
import textwrap

from crystalforge.cli.options import add_parser, add_root


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train-predictor``."""
    p = add_parser(
        subparsers,
        "train-predictor",
        help="train a property predictor (GNN ensemble with calibrated uncertainty)",
        epilog=textwrap.dedent(
            """\
            Writes <out>/predictor.pt and <out>/metrics.json (validation error and calibration).
            Rerunning the same command with the same --out resumes (states in <out>/states/).
            --noise-from trains the noise-aware variant that gradient guidance needs: it learns the
            property from that generator's noised states at every time t.

            examples:
              crystalforge train-predictor mp_20_reduced --property formation_energy_per_atom --out runs/fe
              crystalforge train-predictor my_cifs/ --properties props.csv --property band_gap --out runs/gap
              crystalforge train-predictor mp_20_reduced --property band_gap --noise-from mp_20-dng --out runs/gap-t
              crystalforge train-predictor mp_20 --split test --baseline --property band_gap --out runs/judge"""
        ),
    )
    p.add_argument("data", help="benchmark or reduced-protocol name, or a folder/file of structures")
    p.add_argument("--property", action="append", required=True, dest="props", metavar="NAME",
                   help="property to predict (repeatable: one network predicts all)")  # fmt: skip
    p.add_argument("--properties", metavar="CSV", help="property table for your own structures (id column + values)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--members", type=int, default=3, help="ensemble members (default 3)")
    p.add_argument("--epochs", type=int, default=60, help="epochs per member (default 60)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine schedule)")
    p.add_argument("--hidden", type=int, default=64, help="width of atom states")
    p.add_argument("--layers", type=int, default=3, help="graph convolutions")
    p.add_argument("--cutoff", type=float, default=5.0, help="neighbour radius, Å")
    p.add_argument("--noise-from", metavar="MODEL", help="train the noise-aware variant on this generator's noise")
    p.add_argument(
        "--baseline", action="store_true", help="gradient boosting on Magpie + structure features (<out>/<NAME>.gbm)"
    )
    p.add_argument("--split", default="train", help="--baseline: the benchmark split to fit on (default train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    add_root(p)


def run(args: argparse.Namespace) -> int:
    """Train and report where the predictor went."""
    from crystalforge import api

    def on_epoch(member: int, epoch: int, loss: float, val: float) -> None:
        print(f"member {member + 1}/{args.members} epoch {epoch}/{args.epochs}: train loss {loss:.4f}, "
              f"val MAE {val:.4f} (std units)", file=sys.stderr, flush=True)  # fmt: skip

    if args.baseline:
        folder = api.train_predictor(args.data, properties=args.props, out=args.out, properties_table=args.properties,
                                     root=args.root, threads=args.threads, baseline=True, split=args.split,
                                     seed=args.seed)  # fmt: skip
        print(f"wrote {', '.join(f'{p}.gbm' for p in args.props)} to {folder}")
        return 0
    path = api.train_predictor(
        args.data, properties=args.props, out=args.out, properties_table=args.properties, root=args.root,
        config=api.PropertyGNNConfig(hidden=args.hidden, layers=args.layers, cutoff=args.cutoff),
        settings=api.PredictorTrainConfig(members=args.members, epochs=args.epochs, batch_size=args.batch_size,
                                          lr=args.lr, seed=args.seed),
        noise_from=args.noise_from, on_epoch=on_epoch, threads=args.threads,
    )  # fmt: skip
    print(f"wrote {path}")
    return 0
