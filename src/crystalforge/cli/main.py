"""``crystalforge`` command: one small function per subcommand, each a thin call into ``api``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from crystalforge import __version__

EPILOG_MAIN = """\
examples:
  crystalforge data list
  crystalforge data info perov_5 --root ../shared/data
  crystalforge data prepare mp_20_reduced --workers 2
  crystalforge convert structures/ all.extxyz
  crystalforge convert mp-1234.cif mp-1234.vasp
  crystalforge convert generated.extxyz cifs/ --to cif --symmetrize
  crystalforge evaluate generated/ --reference mp_20 --task dng --out eval/
  crystalforge evaluate predictions/ --reference perov_5 --task csp --out eval/
  crystalforge models
  crystalforge generate --model perov_5-dng -n 100 --out gen/
  crystalforge csp --model perov_5-csp --formula SrTiO3 --out pred/
  crystalforge train configs/perov_5-csp-flow.yaml --out runs/perov_5-csp
"""


# ---- data ---------------------------------------------------------------------------------------
def cmd_data_list(args: argparse.Namespace) -> int:
    """List the benchmark datasets and reduced protocols, and whether their files are present."""
    from crystalforge.data.paths import data_dir
    from crystalforge.data.sources import BENCHMARKS, REDUCED, SPLITS

    root = data_dir(args.root)
    print(f"data directory: {root}")
    for spec in BENCHMARKS.values():
        present = []
        for split in SPLITS + spec.extra_splits:
            try:
                spec.split_file(root, split)
                present.append(split)
            except FileNotFoundError:
                pass
        print(f"  {spec.name:<18} {spec.description}  [present: {', '.join(present) or 'none'}]")
    for proto in REDUCED.values():
        print(f"  {proto.name:<18} {proto.describe()}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    """Print the split sizes of a dataset (and statistics with --stats)."""
    from crystalforge import api
    from crystalforge.data.benchmark import expected_rows
    from crystalforge.data.paths import data_dir
    from crystalforge.data.sources import BENCHMARKS, REDUCED, SPLITS

    name = args.name
    if name in BENCHMARKS or name in REDUCED:
        spec = BENCHMARKS[REDUCED[name].base if name in REDUCED else name]
        splits = SPLITS + (() if name in REDUCED else spec.extra_splits)
        print(f"{name}: {REDUCED[name].describe() if name in REDUCED else spec.description}")
        print(f"data directory: {data_dir(args.root)}")
        print(f"{'split':<14}{'structures':>11}")
        present = []
        for split in splits:
            try:
                count = f"{expected_rows(name, split, root=args.root):>11,}"
                present.append(split)
            except FileNotFoundError:
                count = f"{'missing':>11}"
            print(f"{split:<14}{count}")
        wanted = [] if args.stats is None else (args.stats or present)  # bare --stats: every present split
        datasets = [(s, api.load_dataset(name, s, root=args.root, workers=args.workers)) for s in wanted]
    else:
        dataset = api.load_dataset(name, properties=args.properties)
        print(f"{name}: user dataset, {len(dataset)} structures, properties {dataset.property_names or 'none'}")
        for failure in dataset.failures:
            print(f"  skipped {failure}", file=sys.stderr)
        datasets = [("all", dataset)] if args.stats is not None else []
    for split, dataset in datasets:
        stats = api.dataset_stats(dataset)
        print(f"\n[{split}] statistics ({stats.num_structures} structures)")
        for key, value in _stats_summary(stats).items():
            print(f"  {key:<32} {json.dumps(value)}")
    return 0


def _stats_summary(stats) -> dict:  # noqa: ANN001 - DatasetStats
    from crystalforge.core.elements import z_to_symbol

    top = sorted(((c, z) for z, c in enumerate(stats.element_structures) if c), reverse=True)[:10]
    return {
        "num_atoms_histogram": {n: c for n, c in enumerate(stats.num_atoms_hist) if c},
        "density_g_cm3 (mean, std)": [round(stats.density_mean, 4), round(stats.density_std, 4)],
        "volume_per_atom_A3 (mean, std)": [round(stats.volume_per_atom_mean, 3), round(stats.volume_per_atom_std, 3)],
        "lengths_log_mean": [round(x, 4) for x in stats.log_lengths_mean],
        "angles_mean_deg": [round(x, 2) for x in stats.angles_mean],
        "num_elements_histogram": {k: c for k, c in enumerate(stats.num_elements_hist) if c},
        "most_common_elements": {z_to_symbol(z): c for c, z in top},
    }


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Parse and cache dataset splits (progress bar; later loads take well under a second)."""
    from crystalforge import api
    from crystalforge.data.benchmark import expected_rows
    from crystalforge.data.preprocess import PreprocessOptions

    options = PreprocessOptions(niggli=not args.no_niggli, primitive=args.primitive)
    failed = 0
    for split in args.splits:
        try:
            total = expected_rows(args.name, split, root=args.root)
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
                workers=args.workers,
                cache=True,
                progress=bar.update,
            )
            bar.update(total - bar.n)
        print(f"{args.name}/{split}: {len(dataset)} structures cached, {len(dataset.failures)} skipped")
        for failure in dataset.failures:
            print(f"  skipped {failure}", file=sys.stderr)
    return 1 if failed else 0


# ---- convert ------------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    """Convert structures between CIF, POSCAR, extxyz, npz and crystal text; bad records are skipped and reported."""
    from crystalforge import api
    from crystalforge.io.files import detect_format

    out = Path(args.output)
    to_folder = args.output.endswith(("/", "\\")) or out.is_dir()
    fmt = args.to
    if fmt is None and not to_folder:
        fmt = "text" if out.suffix.lower() in api.TEXT_SUFFIXES else detect_format(out)
    if to_folder and fmt is None:
        print("error: converting into a folder needs --to FORMAT", file=sys.stderr)
        return 2
    good, bad = [], []
    with api.progress_bar(None, "reading") as bar:
        for record in api.iter_records(args.input, fmt=args.from_format):
            (good if record.crystal is not None else bad).append(record)
            bar.update(1)
    if good:
        crystals = [r.crystal for r in good]
        if to_folder:
            suffix = {"cif": ".cif", "poscar": ".vasp", "extxyz": ".extxyz", "npz": ".npz", "text": ".txt"}[fmt]
            for i, crystal in enumerate(crystals):
                stem = (crystal.material_id or f"structure_{i}").replace("/", "_").replace(":", "_")
                api.write_structures(
                    [crystal], out / f"{stem}{suffix}", fmt=fmt, symmetrize=args.symmetrize, symprec=args.symprec
                )
        else:
            api.write_structures(crystals, out, fmt=fmt, symmetrize=args.symmetrize, symprec=args.symprec)
    print(f"converted {len(good)} structure(s) to {out}; skipped {len(bad)}")
    for record in bad:
        print(f"  skipped {record.source}: {record.error}", file=sys.stderr)
    if not good:
        return 1
    return 1 if (bad and args.strict) else 0


# ---- evaluate -----------------------------------------------------------------------------------
def _parse_target(text: str | None) -> tuple[str, float | None, float | None] | None:
    """``NAME:LOW:HIGH`` (either bound may be empty) → (name, low, high)."""
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"--target must be NAME:LOW:HIGH (a bound may be empty), not {text!r}")
    try:
        low, high = (float(v) if v.strip() else None for v in parts[1:])
    except ValueError:
        raise ValueError(f"--target bounds must be numbers or empty, not {text!r}") from None
    return parts[0], low, high


def _parse_cutoffs(text: str | None) -> tuple[float, float] | None:
    """``"0.4,10"`` → (0.4, 10.0)."""
    if text is None:
        return None
    try:
        struct, comp = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--cov-cutoffs must be STRUCT,COMP (two numbers), not {text!r}") from None
    return struct, comp


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate structures by the pinned protocol; write summary.json, per_structure.csv, summary.md."""
    from crystalforge import api

    reference = None if args.reference.lower() == "none" else args.reference
    train: str | bool | None = None
    if args.train is not None:
        train = False if args.train.lower() == "none" else args.train
    report = api.evaluate(
        args.samples,
        reference=reference,
        task=args.task,
        split=args.split,
        train=train,
        relax=args.relax,
        coverage=not args.no_coverage,
        coverage_cutoffs=_parse_cutoffs(args.cov_cutoffs),
        k=args.k,
        target=_parse_target(args.target),
        out=args.out,
        workers=args.workers,
        root=args.root,
        fmt=args.format,
        show_progress=True,
    )
    print(report.to_markdown(), end="")
    if args.out:
        print(f"wrote {Path(args.out) / 'summary.json'}, per_structure.csv and summary.md")
    errors = report.protocol.get("errors")
    if errors:
        print(f"error: {len(errors)} metric(s) failed: {', '.join(errors)} (see protocol.errors)", file=sys.stderr)
        return 1
    return 0


# ---- models -------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    """List the shipped models."""
    from crystalforge import api

    cards = api.list_models()
    if not cards:
        print("no shipped models in this installation")
        return 0
    print(f"{'name':<22}{'task':<6}{'kind':<11}{'dataset':<18}{'steps':>6}{'anti-ann.':>10}  description")
    for name, card in sorted(cards.items()):
        scale = card.get("default_anti_annealing")
        if scale is None:
            shown = "-"
        elif isinstance(scale, dict):  # per field, in --anti-annealing's syntax
            shown = ",".join(f"{k}={v:g}" for k, v in scale.items())
        else:
            shown = f"{scale:g}"
        print(
            f"{name:<22}{card['task']:<6}{card['kind']:<11}{card['dataset']:<18}{card['default_steps']:>6}"
            f"{shown:>10}  {card.get('description', '')}"
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) a model from a YAML config."""
    from crystalforge import api

    path = api.train(args.config, args.out, overrides=args.set or ())
    print(f"wrote {path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate crystals with a shipped or trained model."""
    from crystalforge import api

    with api.progress_bar(args.n, "generating") as bar:
        crystals = api.generate(
            args.model,
            n=args.n,
            out=args.out,
            num_atoms=args.num_atoms,
            composition=args.composition,
            steps=args.steps,
            anti_annealing=args.anti_annealing,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            progress=bar.update,
        )
    _print_written(len(crystals), args.out)
    return 0 if len(crystals) == args.n else 1


def cmd_csp(args: argparse.Namespace) -> int:
    """Predict structures for formulas or a reference split."""
    from crystalforge import api

    with api.progress_bar(None, "predicting") as bar:
        crystals = api.csp(
            args.model,
            out=args.out,
            formulas=args.formula or (),
            reference=args.reference,
            split=args.split,
            limit=args.limit,
            k=args.k,
            steps=args.steps,
            anti_annealing=args.anti_annealing,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            root=args.root,
            progress=bar.update,
        )
    _print_written(len(crystals), args.out)
    return 0


def _anti_annealing(text: str) -> float | dict[str, float]:
    """The argparse type of ``--anti-annealing``."""
    from crystalforge.sampling.samplers import parse_anti_annealing

    try:
        return parse_anti_annealing(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _print_written(count: int, out: str) -> None:
    """The closing line of ``generate`` and ``csp``: what the sampling runner wrote."""
    print(f"wrote {count} structures to {out} (samples.extxyz, cif/, cif_symmetrized/)")


# ---- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the --help smoke tests)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="crystalforge",
        description="Generative inverse design of crystalline materials.",
        epilog=EPILOG_MAIN,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"crystalforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="list, inspect and prepare datasets", formatter_class=fmt)
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "list",
        help="list benchmark datasets and reduced protocols",
        formatter_class=fmt,
        epilog="example:\n  crystalforge data list --root ../shared/data",
    )
    p.add_argument(
        "--root", help="data directory (default: $CRYSTALFORGE_DATA_DIR or ~/.local/share/crystalforge/data)"
    )
    p.set_defaults(func=cmd_data_list)

    p = data_sub.add_parser(
        "info",
        help="split sizes (and statistics) of a dataset",
        formatter_class=fmt,
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
    p.add_argument("--root", help="data directory")
    p.add_argument(
        "--stats",
        nargs="*",
        metavar="SPLIT",
        help="also parse these splits (all present ones if none named) and print statistics",
    )
    p.add_argument("--properties", help="CSV property table for a user dataset")
    p.add_argument("--workers", type=int, default=None, help="parsing processes (default: all cores, at most 8)")
    p.set_defaults(func=cmd_data_info)

    p = data_sub.add_parser(
        "prepare",
        help="parse and cache dataset splits",
        formatter_class=fmt,
        epilog=(
            "examples:\n  crystalforge data prepare perov_5\n"
            "  crystalforge data prepare mp_20 --splits val test --workers 2"
        ),
    )
    p.add_argument("name", help="benchmark or reduced protocol name")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="splits to prepare")
    p.add_argument("--root", help="data directory")
    p.add_argument("--workers", type=int, default=None, help="parsing processes")
    p.add_argument("--primitive", action="store_true", help="reduce to the primitive cell before Niggli reduction")
    p.add_argument("--no-niggli", action="store_true", help="keep cells as in the CIFs (no Niggli reduction)")
    p.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser(
        "convert",
        help="convert structures between CIF, POSCAR, extxyz, npz and crystal text",
        formatter_class=fmt,
        epilog=textwrap.dedent(
            """\
            Input is a file or a folder (all structure files in it). Output is a file, or a folder
            (name ending in / or an existing folder) with one file per structure. Bad records are
            skipped and listed at the end; the output is written atomically.

            examples:
              crystalforge convert structures/ all.extxyz
              crystalforge convert all.extxyz cifs/ --to cif --symmetrize --symprec 0.01
              crystalforge convert POSCAR structure.txt          # crystal text format"""
        ),
    )
    p.add_argument("input", help="file or folder")
    p.add_argument("output", help="file, or folder ending in /")
    p.add_argument(
        "--from", dest="from_format", choices=["cif", "poscar", "extxyz", "npz", "text"], help="input format"
    )
    p.add_argument(
        "--to", choices=["cif", "poscar", "extxyz", "npz", "text"], help="output format (default: from the name)"
    )
    p.add_argument("--symmetrize", action="store_true", help="CIF: write the symmetrised conventional cell (spglib)")
    p.add_argument("--symprec", type=float, default=0.1, help="symmetry tolerance in Å for --symmetrize (default 0.1)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any record was skipped")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "evaluate",
        help="evaluate generated or predicted structures by the pinned protocol",
        formatter_class=fmt,
        epilog=textwrap.dedent(
            """\
            SAMPLES is a folder of CIF/POSCAR/extxyz files, one such file, a CDVAE-format CSV or an
            .npz archive. Unreadable records are counted, with their reason, never dropped.
            An output folder of `generate`/`csp` gives its samples.extxyz plus one invalid
            sample per structure listed in its failures.csv.
            For --task csp, predictions link to reference material_ids by name: mp-1234.cif,
            mp-1234_0.cif ... mp-1234_19.cif (best of k), or an extxyz material_id field.
            Relaxation results are cached per structure in --out, so a rerun resumes.

            examples:
              crystalforge evaluate generated/ --reference mp_20 --task dng --out eval/
              crystalforge evaluate samples.extxyz --reference perov_5 --relax chgnet --workers 2 --out eval/
              crystalforge evaluate predictions/ --reference perov_5 --task csp --k 20 --out eval/
              crystalforge evaluate generated/ --reference my_test.csv --train my_train.csv --no-coverage
              crystalforge evaluate generated/ --reference none --target band_gap:1.0:2.0"""
        ),
    )
    p.add_argument("samples", help="folder or file of structures, or a CDVAE-format CSV")
    p.add_argument(
        "--reference",
        default="mp_20",
        help="benchmark name (its --split is used), CSV/structure file, or 'none' (default mp_20)",
    )
    p.add_argument("--task", choices=["dng", "csp"], default="dng", help="de novo generation or structure prediction")
    p.add_argument("--split", default="test", help="reference split for a benchmark name (default test)")
    p.add_argument(
        "--train", help="training set for novelty: name, path or 'none' (default: the protocol's train split)"
    )
    p.add_argument("--relax", choices=["chgnet"], help="relax with this MLIP and compute stability and S.U.N.")
    p.add_argument("--no-coverage", action="store_true", help="skip COV-R/P (CrystalNN fingerprints are slow)")
    p.add_argument(
        "--cov-cutoffs", metavar="STRUCT,COMP", help="coverage cutoffs (default: CDVAE's for a benchmark reference)"
    )
    p.add_argument("--k", type=int, help="CSP: predictions per reference for best-of-k (default: all given)")
    p.add_argument("--target", help="property window NAME:LOW:HIGH for the targeting success rate")
    p.add_argument("--out", help="output folder for summary.json, per_structure.csv and summary.md")
    p.add_argument("--workers", type=int, default=1, help="processes for fingerprints, matching and relaxation")
    p.add_argument("--root", help="data directory for benchmark names")
    p.add_argument("--format", choices=["cif", "poscar", "extxyz", "npz", "text", "csv"], help="sample file format")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "models",
        help="list the shipped models",
        formatter_class=fmt,
        epilog="example:\n  crystalforge models",
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "train",
        help="train (or resume) a generative model from a YAML config",
        formatter_class=fmt,
        epilog=textwrap.dedent(
            """\
            Rerunning the same command with the same --out resumes from <out>/last.ckpt.
            The exported <out>/model.pt (EMA weights, config, dataset statistics) is what
            `crystalforge generate --model <out>/model.pt` loads.

            examples:
              crystalforge train configs/perov_5-csp-flow.yaml --out runs/perov_5-csp
              crystalforge train configs/mp_20-dng-flow.yaml --out runs/mp20 --set trainer.max_epochs=200
              crystalforge train configs/perov_5-csp-flow.yaml --out runs/gpu --set trainer.devices=2"""
        ),
    )
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, model.pt)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.set_defaults(func=cmd_train)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output folder (resumable: existing chunks are kept)")
    common.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    common.add_argument(
        "--anti-annealing",
        type=_anti_annealing,
        metavar="S | FIELD=S[,FIELD=S]",
        help="flow velocity scale 1 + S·t (FlowMM): one value for every flow field or per field, "
        "e.g. frac_coords=5 (default: the model's setting)",
    )
    common.add_argument("--seed", type=int, default=0, help="random seed (chunk k uses seed + k)")
    common.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    common.add_argument("--batch-size", type=int, default=256, help="crystals per sampling batch")

    p = sub.add_parser(
        "generate",
        parents=[common],
        help="generate crystals with a shipped or trained model",
        formatter_class=fmt,
        epilog=textwrap.dedent(
            """\
            examples:
              crystalforge generate --model perov_5-dng -n 100 --out gen/
              crystalforge generate --model mp_20-dng -n 1000 --steps 20 --out gen/ --device cuda
              crystalforge generate --model perov_5-csp --composition SrTiO3 -n 10 --out srtio3/
              crystalforge generate --model runs/mine/model.pt --num-atoms 8 -n 50 --out gen/"""
        ),
    )
    p.add_argument("--model", default="perov_5-dng", help="shipped model name (crystalforge models) or model.pt")
    p.add_argument("-n", type=int, default=100, help="number of crystals")
    p.add_argument("--num-atoms", type=int, help="DNG: atoms per cell (default: drawn from the training data)")
    p.add_argument("--composition", help="cell content as a formula, e.g. SrTiO3 (CSP models)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "csp",
        parents=[common],
        help="predict crystal structures for compositions",
        formatter_class=fmt,
        epilog=textwrap.dedent(
            """\
            Outputs are named by the reference material_id (<id> for k=1, <id>_<j> for k>1), ready for
            `crystalforge evaluate OUT/cif --reference NAME --task csp`.

            examples:
              crystalforge csp --model perov_5-csp --formula SrTiO3 BaTiO3 --out pred/
              crystalforge csp --model perov_5-csp --reference perov_5 --split test --limit 100 --out pred/
              crystalforge csp --model mp_20-csp --reference mp_20 --k 20 --out pred20/"""
        ),
    )
    p.add_argument("--model", default="perov_5-csp", help="shipped CSP model or model.pt")
    p.add_argument("--formula", nargs="+", help="cell contents, e.g. SrTiO3 (taken literally)")
    p.add_argument("--reference", help="benchmark name or CSV: predict every composition of --split")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="only the first N reference compositions")
    p.add_argument("--k", type=int, default=1, help="predictions per composition")
    p.add_argument("--root", help="data directory for benchmark names")
    p.set_defaults(func=cmd_csp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    from crystalforge.core.errors import CrystalError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except (CrystalError, FileNotFoundError, KeyError, ValueError) as exc:  # ConfigError is a ValueError
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
