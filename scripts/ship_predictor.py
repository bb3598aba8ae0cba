"""Ship a trained predictor: copy ``<run>/predictor.pt`` into the package and write its card in ``index.json``.

    python scripts/ship_predictor.py runs/pred-mp20 mp_20-properties --dataset mp_20_reduced \\
        --metrics benchmarks/results/predictors-mp_20.json --command "crystalforge train-predictor ..." \\
        --hardware "..." --description "..."

Training figures (members, epochs, wall time, parameters, calibration factors) come from the
checkpoint's record; test metrics from the GNN rows of ``benchmarks/predictors.py --json``, so no
figure is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "src" / "crystalforge" / "pretrained"
KEYS = ("mae", "rmse", "coverage_1sigma", "coverage_2sigma", "miscalibration_area")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--hardware", required=True)
    parser.add_argument("--description", required=True)
    args = parser.parse_args()
    source = args.run / "predictor.pt"
    payload = torch.load(source, map_location="cpu", weights_only=True)
    record = payload["record"]
    bench = json.loads(args.metrics.read_text())
    gnn_rows = [r for r in bench["rows"] if r["model"].startswith("GNN")]
    if not gnn_rows:
        raise SystemExit(f"{args.metrics}: no GNN rows")
    settings = record["train_settings"]
    card = {
        "file": f"{args.name}.pt",
        "kind": "predictor",
        "dataset": args.dataset,
        "properties": payload["config"]["properties"],
        "description": args.description,
        "training": {
            "command": args.command,
            "data": record["data"],
            "members": settings["members"],
            "epochs": settings["epochs"],
            "wall_s": record["wall_s"],
            "hardware": args.hardware,
            "parameters_per_member": record["parameters"],
            "calibration_from_val": record["calibration_from_val"],
        },
        "metrics": {
            "protocol": f"{bench['dataset']} test ({bench['test']} structures); {' '.join(bench['argv'])}",
            **{f"{r['property']}_{k}": round(r[k], 4) for r in gnn_rows for k in KEYS},
        },
    }
    shutil.copyfile(source, MODELS / card["file"])
    index_path = MODELS / "index.json"
    index = json.loads(index_path.read_text())
    index[args.name] = card
    index_path.write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    print(f"shipped {args.name}: {MODELS / card['file']} ({(MODELS / card['file']).stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
