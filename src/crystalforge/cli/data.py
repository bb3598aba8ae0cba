"""``crystalforge data list|info|prepare``: list, inspect and cache the datasets."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import TYPE_CHECKING, Any

from crystalforge.cli.options import FORMATTER, add_parser, add_root, add_workers, executor

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge import api


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` and its three subcommands."""
    data = subparsers.add_parser("data", help="list, inspect and prepare datasets", formatter_class=FORMATTER)
    data_sub = data.add_subparsers(dest="data_command", required=True)

    p = add_parser(
        data_sub,
        "list",
        help="list benchmark datasets and reduced protocols",
        epilog="example:\n  crystalforge data list --root ../shared/data",
    )
    add_root(p, "data directory (default: $CRYSTALFORGE_DATA_DIR or ~/.local/share/crystalforge/data)")

    p = add_parser(
        data_sub,
        "info",
        help="split sizes (and statistics) of a dataset",
        epilog=textwrap.dedent(
            """\
            examples:
              crystalforge data info perov_5 --root ../shared/data
              crystalforge data info mp_20_reduced --stats train
              crystalforge data info my_cifs/ --properties props.csv --stats"""
        ),
    )
    p.add_argument(
        "name", help="benchmark (perov_5, carbon_24, mp_20, mpts_52), reduced protocol (mp_20_reduced) or path"
    )
    add_root(p)
    p.add_argument(
        "--stats",
        nargs="*",
        metavar="SPLIT",
        help="also parse these splits (all present ones if none named) and print statistics",
    )
    p.add_argument("--properties", help="CSV property table for a user dataset")
    add_workers(p, default=None, help="parsing processes (default: all cores, at most 8)")

    p = add_parser(
        data_sub,
        "prepare",
        help="parse and cache dataset splits",
        epilog=(
            "examples:\n  crystalforge data prepare perov_5\n"
            "  crystalforge data prepare mp_20 --splits val test --workers 2"
        ),
    )
    p.add_argument("name", help="benchmark or reduced protocol name")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="splits to prepare")
    add_root(p)
    add_workers(p, default=None, help="parsing processes")
    p.add_argument("--primitive", action="store_true", help="reduce to the primitive cell before Niggli reduction")
    p.add_argument("--no-niggli", action="store_true", help="keep cells as in the CIFs (no Niggli reduction)")


def run(args: argparse.Namespace) -> int:
    """Run ``data list``, ``data info`` or ``data prepare``."""
    return {"list": run_list, "info": run_info, "prepare": run_prepare}[args.data_command](args)


def run_list(args: argparse.Namespace) -> int:
    """List the benchmark datasets and reduced protocols, and whether their files are present."""
    from crystalforge import api

    root = api.data_dir(args.root)
    print(f"data directory: {root}")
    for spec in api.BENCHMARKS.values():
        present = []
        for split in api.SPLITS + spec.extra_splits:
            try:
                spec.split_file(root, split)
                present.append(split)
            except FileNotFoundError:
                pass
        print(f"  {spec.name:<18} {spec.description}  [present: {', '.join(present) or 'none'}]")
    for proto in api.REDUCED.values():
        print(f"  {proto.name:<18} {proto.describe()}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print the split sizes of a dataset (and statistics with --stats)."""
    from crystalforge import api

    name = args.name
    if name in api.BENCHMARKS or name in api.REDUCED:
        reduced = api.REDUCED.get(name)
        spec = api.BENCHMARKS[reduced.base if reduced is not None else name]
        splits = api.SPLITS + (() if reduced is not None else spec.extra_splits)
        print(f"{name}: {reduced.describe() if reduced is not None else spec.description}")
        print(f"data directory: {api.data_dir(args.root)}")
        print(f"{'split':<14}{'structures':>11}")
        present = []
        for split in splits:
            try:
                count = f"{api.expected_rows(name, split, root=args.root):>11,}"
                present.append(split)
            except FileNotFoundError:
                count = f"{'missing':>11}"
            print(f"{split:<14}{count}")
        wanted = [] if args.stats is None else (args.stats or present)  # bare --stats: every present split
        workers = executor(args)
        datasets = [(s, api.load_dataset(name, s, root=args.root, workers=workers)) for s in wanted]
    else:
        dataset = api.load_dataset(name, properties=args.properties)
        print(f"{name}: user dataset, {len(dataset)} structures, properties {dataset.property_names or 'none'}")
        for failure in dataset.failures:
            print(f"  skipped {failure}", file=sys.stderr)
        datasets = [("all", dataset)] if args.stats is not None else []
    for split, dataset in datasets:
        stats = api.dataset_stats(dataset)
        print(f"\n[{split}] statistics ({stats.num_structures} structures)")
        for key, value in stats_summary(stats).items():
            print(f"  {key:<32} {json.dumps(value)}")
    return 0


def stats_summary(stats: api.DatasetStats) -> dict[str, Any]:
    """The printed digest of a ``DatasetStats``: histograms, means and the most common elements."""
    from crystalforge import api

    top = sorted(((c, z) for z, c in enumerate(stats.element_structures) if c), reverse=True)[:10]
    return {
        "num_atoms_histogram": {n: c for n, c in enumerate(stats.num_atoms_hist) if c},
        "density_g_cm3 (mean, std)": [round(stats.density_mean, 4), round(stats.density_std, 4)],
        "volume_per_atom_A3 (mean, std)": [round(stats.volume_per_atom_mean, 3), round(stats.volume_per_atom_std, 3)],
        "lengths_log_mean": [round(x, 4) for x in stats.log_lengths_mean],
        "angles_mean_deg": [round(x, 2) for x in stats.angles_mean],
        "num_elements_histogram": {k: c for k, c in enumerate(stats.num_elements_hist) if c},
        "most_common_elements": {api.z_to_symbol(z): c for c, z in top},
    }


def run_prepare(args: argparse.Namespace) -> int:
    """Parse and cache dataset splits (progress bar; later loads take well under a second)."""
    from crystalforge import api

    options = api.PreprocessOptions(niggli=not args.no_niggli, primitive=args.primitive)
    workers = executor(args)
    failed = 0
    for split in args.splits:
        try:
            total = api.expected_rows(args.name, split, root=args.root)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        with api.progress_bar(total, f"{args.name}/{split}") as bar:
            dataset = api.load_dataset(
                args.name,
                split,
                root=args.root,
                preprocess=options,
                workers=workers,
                cache=True,
                progress=bar.update,
            )
            bar.update(total - bar.n)
        print(f"{args.name}/{split}: {len(dataset)} structures cached, {len(dataset.failures)} skipped")
        for failure in dataset.failures:
            print(f"  skipped {failure}", file=sys.stderr)
    return 1 if failed else 0
