"""Ship a trained run: copy its ``model.pt`` into the package and write its card in ``index.json``.

    python scripts/ship_model.py runs/mp_20-dng mp_20-dng --default-steps 50 \\
        --description "..." --data "..." --hardware "..." --command "crystalforge train ..." \\
        --metrics benchmarks/results/mp_20-dng.json:0 [--metrics FILE:ROW ...] --protocol "..."

The card's training figures (epochs, wall time, parameters, final holdout loss) are read from the
checkpoint itself; its metrics from rows of ``benchmarks/bench_models.py --json`` output, so no
figure is typed by hand. CSP rows are keyed by step count and anti-annealing
(``match_rate_10_steps``, ``match_rate_k20_50_steps_anti_annealing_5``...).
Refuses a checkpoint whose config records an absolute path.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "src" / "crystalforge" / "pretrained"
DNG_KEYS = (
    "validity",
    "validity_struct",
    "validity_comp",
    "cov_recall",  # the published scripts' rule: every fingerprinted sample enters
    "cov_precision",
    "cov_recall_valid_only",
    "cov_precision_valid_only",
    "wdist_density",
    "wdist_num_elements",
    "unique_rate",
    "novel_rate",
)


def _paths_in(value: object) -> list[str]:
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths_in(v)]
    return [value] if isinstance(value, str) and value.startswith(("/", "~")) else []


def _scale_label(scale: object) -> str:
    if isinstance(scale, dict):
        return "-".join(f"{k}{v:g}" for k, v in scale.items())
    return f"{float(scale):g}" if isinstance(scale, (int, float)) else str(scale)


def _rounded(value: object) -> object:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def _k_from_argv(argv: list[str] | None, spec: str) -> int:
    """k of a row written before rows recorded it: the run's ``--k`` (bench_models.py's default 1)."""
    if argv is None:
        sys.exit(f"{spec}: neither the row nor the file records k; rerun the benchmark")
    return int(argv[argv.index("--k") + 1]) if "--k" in argv else 1


def _metrics(specs: list[str]) -> dict:
    """Card metrics from ``bench_models.py --json`` rows (which record k and the sampler used).

    A row with a match rate is a CSP row, any other a DNG row, so a model doing both gets both.
    """
    out: dict = {}
    for spec in specs:
        file, _, row = spec.rpartition(":")
        data = json.loads(Path(file).read_text())
        r = data["rows"][int(row)]
        scale = r.get("anti_annealing")
        if "match_rate" in r:
            k = r["k"] if "k" in r else _k_from_argv(data.get("argv"), spec)
            suffix = f"_{r['steps']}_steps" + (f"_anti_annealing_{_scale_label(scale)}" if scale else "")
            # a best-of-k row gives only its best-of-k figures: its k=1 rates may be over a subset
            if k > 1:
                figures = {f"{key}{k}{suffix}": round(r[key], 4) for key in ("match_rate_k", "rmse_k")}
            else:
                figures = {f"{key}{suffix}": round(r[key], 4) for key in ("match_rate", "rmse")}
            clash = sorted(key for key in figures if key in out and out[key] != figures[key])
            if clash:
                sys.exit(f"{spec}: {clash} already set by an earlier --metrics row with other values")
            out.update(figures)
        else:
            out.update({key: round(r[key], 4) for key in DNG_KEYS if r.get(key) is not None})
            out["steps"] = r["steps"]
            if scale:
                out["anti_annealing"] = scale
            if "relaxed" in r:
                out["relaxed"] = _rounded(r["relaxed"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--default-steps", type=int, required=True)
    parser.add_argument("--default-anti-annealing", help="S or FIELD=S[,...], as the CLI's --anti-annealing")
    parser.add_argument("--description", required=True)
    parser.add_argument("--data", required=True, help="what the model was trained on, in words")
    parser.add_argument("--hardware", required=True)
    parser.add_argument("--command", required=True, help="the training command, as run")
    parser.add_argument("--metrics", action="append", default=[], help="BENCH_JSON:ROW (repeatable)")
    parser.add_argument("--protocol", required=True, help="how the metrics were measured (command)")
    args = parser.parse_args()

    import torch

    from crystalforge.sampling.samplers import parse_anti_annealing
    from crystalforge.training.loading import load_checkpoint_model as load_model

    source = args.run / "model.pt"
    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    scale = parse_anti_annealing(args.default_anti_annealing) if args.default_anti_annealing else None
    model, loaded, _ = load_model(ckpt)  # the file read once
    if scale is not None:  # a default the model cannot use would break every later generate
        fields = getattr(model, "velocity_fields", ())
        named = set(scale) if isinstance(scale, dict) else {None}
        if not fields or (None not in named and not named <= set(fields)):
            sys.exit(f"--default-anti-annealing {args.default_anti_annealing}: the model's flow fields are {fields}")
    config = ckpt["config"]
    family = ckpt.get("family", "joint")
    tasks = "+".join(model.tasks)  # "csp", "dng" or "csp+dng" (families doing both)
    bad = _paths_in(config)
    if bad:
        sys.exit(f"{source}: the config records absolute paths {bad}; retrain or edit before shipping")
    m = ckpt["metrics"]
    card = {
        "file": f"{args.name}.pt",
        "family": family,
        "task": tasks,
        "kind": getattr(loaded.model, "kind", family),  # flow / diffusion for the joint family, gan...
        "dataset": config["data"]["dataset"],
        "default_steps": args.default_steps,
        "description": args.description,
        "training": {
            "command": args.command,
            "data": args.data,
            "epochs": int(m["epochs"]),
            "wall_s": round(float(m["wall_s_this_run"])),
            "hardware": args.hardware,
            "parameters": int(m["parameters"]),
            "final_train_loss": round(float(m["train/loss"]), 3),
        },
        "metrics": {"protocol": args.protocol, **_metrics(args.metrics)},
    }
    if "val/loss" in m:  # a model fitted without a holdout (the search baselines) has none
        card["training"]["final_val_loss"] = round(float(m["val/loss"]), 3)
    if scale is not None:
        card["default_anti_annealing"] = scale
    tmp = MODELS / f".{args.name}.pt.tmp"
    shutil.copyfile(source, tmp)
    tmp.replace(MODELS / f"{args.name}.pt")
    index_path = MODELS / "index.json"
    index = json.loads(index_path.read_text())
    index[args.name] = card
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(index_path)
    print(json.dumps(card, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
