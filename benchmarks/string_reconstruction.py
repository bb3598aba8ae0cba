"""Reconstruction rate of the invariant quotient strings on a benchmark split.

For each of the first ``--limit`` structures of ``--reference``/``--split``:

- **encodable**: ``encode`` gives a string (no disconnected or non-3-periodic net, no cap hit);
- **graph round trip**: ``encode(decode(s)) == s`` for the spring-relaxed embedding (no MLIP);
- **match**: ``StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5).fit(original, decoded)``
  (pymatgen's defaults otherwise: primitive cells, volumes scaled), without and, with
  ``--relax NAME``, after relaxing with that MLIP (first scaled to the lowest ``NAME-static``
  energy over ``SCALE_FACTORS``); the RMSE of a match is ``get_rms_dist`` (normalised by
  ``(V/n)^(1/3)``). CDVAE's looser criterion, ``get_rms_dist(...) is not None``, is reported as
  ``rate_rms_dist``. ``--control`` also relaxes the originals the same way and matches them (how
  many structures survive the MLIP at all).

Fractions are over all structures attempted. Prints a Markdown table; ``--json`` writes every
figure, the settings, the command and the machine.

Example::

    python benchmarks/string_reconstruction.py --reference perov_5 --split test --limit 200 --json out.json
    python benchmarks/string_reconstruction.py --reference mp_20 --limit 50 --relax chgnet --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from collections import Counter
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher

from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.data.resolve import load_dataset
from crystalforge.evaluation.metrics.structure_matcher import FIT_ANGLE_TOL, FIT_LTOL, FIT_STOL, MatcherSettings
from crystalforge.representations.canonical import CanonicalisationLimitError
from crystalforge.representations.quotient_strings import QuotientStringRepresentation, scale_to_lowest_energy

sys.path.insert(0, os.path.dirname(__file__))
from _common import data_root, machine

MATCHER = MatcherSettings(ltol=FIT_LTOL, stol=FIT_STOL, angle_tol=FIT_ANGLE_TOL)  # pymatgen's defaults


def _match(matcher: StructureMatcher, original: Crystal, decoded: Crystal | None) -> tuple[bool, float | None]:
    """(``matcher.fit``, normalised RMS distance from ``get_rms_dist`` or None)."""
    if decoded is None:
        return False, None
    a, b = original.to_pymatgen(), decoded.to_pymatgen()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rms = matcher.get_rms_dist(a, b)
        return bool(matcher.fit(a, b)), None if rms is None else float(rms[0])


def _rate(values: list[tuple[bool, float | None]], total: int) -> dict[str, Any]:
    """Match figures: ``fit`` verdicts (the match rate) and CDVAE's looser ``get_rms_dist is not None``."""
    fitted = [rms for ok, rms in values if ok and rms is not None]
    loose = [rms for _, rms in values if rms is not None]
    return {
        "matched": sum(ok for ok, _ in values),
        "rate": sum(ok for ok, _ in values) / max(total, 1),
        "mean_rmse": float(np.mean(fitted)) if fitted else None,
        "rate_rms_dist": len(loose) / max(total, 1),
        "mean_rmse_rms_dist": float(np.mean(loose)) if loose else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Encode, decode, (relax) and match; every figure of the report."""
    crystals = list(load_dataset(args.reference, args.split, root=data_root()))[: args.limit]
    rep = QuotientStringRepresentation(bond_rule=args.bond_rule, max_candidates=args.max_candidates)
    matcher = MATCHER.matcher()
    encode_s, decode_s = [], []
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}
    round_trips, collided, lengths, max_offset, tol_used = 0, 0, [], 0, Counter[str]()
    searched: list[int] = []  # labellings × basis operations examined per encoded structure
    rows: list[tuple[Crystal, Crystal]] = []  # (original, embedded)
    for crystal in crystals:
        start = time.perf_counter()
        try:
            info = rep.encode_with_info(crystal)
        except CanonicalisationLimitError as exc:
            failures["cap hit"] += 1
            examples.setdefault("cap hit", str(exc))
            continue
        except CrystalError as exc:
            kind = "disconnected" if "disconnected" in exc.problem else "not 3-periodic"
            kind = kind if "bond graph" in exc.problem else "other"
            failures[kind] += 1
            examples.setdefault(kind, str(exc))
            continue
        finally:
            encode_s.append(time.perf_counter() - start)
        tol_used[f"{info.tolerance:g}"] += 1
        searched.append(info.leaves * info.operations)
        lengths.append(len(info.string.split()))
        max_offset = max(max_offset, max((len(t) for t in info.string.split() if set(t) <= {"+", "-"}), default=0))
        start = time.perf_counter()
        try:
            decoded = rep.decode_with_info(info.string)
        except CrystalError as exc:
            failures["decode failed"] += 1
            examples.setdefault("decode failed", str(exc))
            continue
        finally:
            decode_s.append(time.perf_counter() - start)
        collided += decoded.collisions > 0
        with contextlib.suppress(CrystalError):  # a decoded structure that cannot be encoded is no round trip
            round_trips += rep.encode(decoded.embedded) == info.string
        rows.append((crystal, decoded.embedded))
    total = len(crystals)
    report: dict[str, Any] = {
        "reference": args.reference,
        "split": args.split,
        "structures": total,
        "bond_rule": args.bond_rule,
        "tolerances": list(rep.tolerances),
        "max_candidates": args.max_candidates,
        "matcher": MATCHER.as_dict(),
        "encodable": (total - sum(failures[k] for k in ("cap hit", "disconnected", "not 3-periodic", "other"))) / total,
        "failures": dict(failures),
        "failure_examples": examples,
        "cap_hits": failures["cap hit"],
        "bond_tolerance_used": dict(tol_used),
        "graph_round_trip": round_trips / total,
        "decoded_with_collisions": collided,
        "tokens_per_string": {"mean": float(np.mean(lengths)), "max": int(max(lengths))} if lengths else None,
        "largest_offset": max_offset,
        "search_candidates": {"mean": float(np.mean(searched)), "max": int(max(searched))} if searched else None,
        "unrelaxed": _rate([_match(matcher, o, d) for o, d in rows], total),
        "encode_ms_per_structure": 1e3 * float(np.mean(encode_s)) if encode_s else None,
        "decode_ms_per_structure": 1e3 * float(np.mean(decode_s)) if decode_s else None,
    }
    if args.relax:
        from crystalforge.relax import get_relaxer

        settings: dict[str, Any] = {"torch_threads": args.relax_threads}
        if args.relax_steps is not None:
            settings["max_steps"] = args.relax_steps
        start = time.perf_counter()
        with get_relaxer(f"{args.relax}-static") as energy_model:  # volume scan first: the embedding is too dense
            scaled = scale_to_lowest_energy([d for _, d in rows], energy_model)
        report["scan_s_per_structure"] = (time.perf_counter() - start) / max(len(rows), 1)
        start = time.perf_counter()
        with get_relaxer(args.relax, **settings) as relaxer:
            results = relaxer.relax(scaled)
            report["relaxer_settings"] = dict(relaxer.settings)
            report["relax_s_per_structure"] = (time.perf_counter() - start) / max(len(rows), 1)
            if args.control:  # the same MLIP on the original structures: how many survive it at all
                controls = relaxer.relax([o for o, _ in rows])
        relaxed = [r.crystal if r.ok else None for r in results]
        report["relaxed"] = _rate([_match(matcher, o, d) for (o, _), d in zip(rows, relaxed, strict=True)], total)
        report["relaxed"]["relaxer"] = args.relax
        report["relaxed"]["failures"] = sum(r is None for r in relaxed)
        report["relaxed"]["steps_mean"] = float(np.mean([r.steps for r in results])) if results else None
        if args.control:
            kept = [r.crystal if r.ok else None for r in controls]
            report["control_original_relaxed"] = _rate(
                [_match(matcher, o, d) for (o, _), d in zip(rows, kept, strict=True)], total
            )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="perov_5", help="benchmark name (perov_5, mp_20, carbon_24, mpts_52)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=200, help="the first N structures of the split")
    parser.add_argument("--relax", default=None, help="relaxer name for the relaxed match (e.g. chgnet)")
    parser.add_argument("--relax-steps", type=int, default=None, help="optimiser step limit (relaxer default: 500)")
    parser.add_argument("--relax-threads", type=int, default=1, help="torch threads of the relaxer")
    parser.add_argument("--control", action="store_true", help="also relax the originals and match them (MLIP ceiling)")
    parser.add_argument("--bond-rule", default="relative", choices=("relative", "crystalnn"))
    parser.add_argument("--max-candidates", type=int, default=200_000, help="cap on labellings × basis operations")
    parser.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args()
    report = run(args)
    report["command"] = "python " + " ".join(sys.argv)
    report["machine"] = machine()
    lines = [
        "| reference | n | encodable | graph round trip | match (unrelaxed) | RMSE | cap hits | encode ms "
        "| decode ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {args.reference} {args.split} | {report['structures']} | {100 * report['encodable']:.1f}% "
        f"| {100 * report['graph_round_trip']:.1f}% | {100 * report['unrelaxed']['rate']:.1f}% "
        f"| {report['unrelaxed']['mean_rmse'] or float('nan'):.3f} | {report['cap_hits']} "
        f"| {report['encode_ms_per_structure'] or 0:.0f} | {report['decode_ms_per_structure'] or 0:.0f} |",
    ]
    if "relaxed" in report:
        lines.append(
            f"\nafter {args.relax}: match {100 * report['relaxed']['rate']:.1f}% (RMSE "
            f"{report['relaxed']['mean_rmse'] or float('nan'):.3f}), {report['relaxed']['failures']} relax failures, "
            f"{report['relax_s_per_structure']:.1f} s per structure"
        )
    if "control_original_relaxed" in report:
        lines.append(
            f"control: originals relaxed the same way match {100 * report['control_original_relaxed']['rate']:.1f}%"
        )
    print("\n".join(lines))
    print("failures:", report["failures"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
