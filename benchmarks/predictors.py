"""Property predictors side by side on one test split: the GNN ensemble against the gradient-boosting baseline.

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/predictors.py --dataset mp_20_reduced \
        --gnn runs/pred-mp20/predictor.pt --json benchmarks/results/predictors-mp_20.json

The GNN is a trained checkpoint (``crystalforge train-predictor``, on the dataset's train split,
its epochs and calibration chosen on val); the baseline is fitted here on the same train split
(quantile method, its own 10 % calibration holdout). Both are scored on every test structure with
``predictors.ensemble.calibration_report``: MAE, RMSE, coverage of ±1σ/±2σ (ideal 68.3 / 95.4 %),
miscalibration area, Gaussian NLL; plus wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from _common import data_root, machine

from crystalforge.data.resolve import load_dataset
from crystalforge.predictors.baseline import GradientBoostingPredictor, featurize
from crystalforge.predictors.ensemble import PredictorEnsemble, calibration_report
from crystalforge.predictors.training import predict_crystals, targets_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mp_20_reduced")
    parser.add_argument("--gnn", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = data_root()
    train, test = list(load_dataset(args.dataset, "train", root)), list(load_dataset(args.dataset, "test", root))
    gnn = PredictorEnsemble.load(args.gnn)
    props = gnn.properties
    y_test = targets_of(test, props, source="test")
    rows = []
    t0 = time.perf_counter()
    mean, std = predict_crystals(gnn, test)
    gnn_s = time.perf_counter() - t0
    for k, p in enumerate(props):
        rows.append({"property": p, "model": f"GNN ensemble ({len(gnn.members)} members)", "predict_s": gnn_s}
                    | calibration_report(mean[:, k], std[:, k], y_test[:, k]))  # fmt: skip
    t0 = time.perf_counter()
    x_train, names = featurize(train)
    x_test, _ = featurize(test)
    feat_s = time.perf_counter() - t0
    y_train = targets_of(train, props, source="train")
    for k, p in enumerate(props):
        keep = np.isfinite(y_train[:, k])
        t0 = time.perf_counter()
        model = GradientBoostingPredictor(threads=args.threads)
        model.fit_features(x_train[keep], y_train[keep, k], names=names)
        fit_s = time.perf_counter() - t0
        m, s = model.predict_features(x_test)
        rows.append({"property": p, "model": "gradient boosting (Magpie + structure), quantile", "fit_s": fit_s,
                     "features_s": feat_s} | calibration_report(m, s, y_test[:, k]))  # fmt: skip
    for k, p in enumerate(props):
        ok = np.isfinite(y_test[:, k])
        finite_train = y_train[np.isfinite(y_train[:, k]), k]
        mae = float(np.abs(y_test[ok, k] - finite_train.mean()).mean())
        rows.append({"property": p, "model": "train mean", "mae": mae})
    print("| property | model | MAE | RMSE | ±1σ % | ±2σ % | miscal. area | NLL |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: props.index(r["property"])):
        if "rmse" not in r:
            print(f"| {r['property']} | {r['model']} | {r['mae']:.4f} |" + " |" * 5)
            continue
        cells = [f"{r['mae']:.4f}", f"{r['rmse']:.4f}", f"{100 * r['coverage_1sigma']:.1f}",
                 f"{100 * r['coverage_2sigma']:.1f}", f"{r['miscalibration_area']:.3f}", f"{r['nll']:.3f}"]  # fmt: skip
        print(f"| {r['property']} | {r['model']} | " + " | ".join(cells) + " |")
    if args.json:
        payload = {"machine": machine(), "date": date.today().isoformat(), "argv": sys.argv, "dataset": args.dataset,
                   "train": len(train), "test": len(test), "gnn_record": gnn.record, "rows": rows}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=1, default=float))


if __name__ == "__main__":
    main()
