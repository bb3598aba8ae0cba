"""Give a model file the lattice code's range over its training data (weights untouched).

    CRYSTALFORGE_DATA_DIR=../shared/data python scripts/add_code_range.py \\
        src/crystalforge/pretrained/mp_20-dng-diffusion.pt --out runs/mp_20-dng-diffusion-range/model.pt

Model files written before ``DatasetStats.lattice_code_min``/``max`` existed lack them, so the
diffusion sampler's data-range clip (``LatticeDDPM(data_margin=...)``) does not act for them. This
recomputes the statistics from the training split named in the file's own config and adds the two
fields. It refuses when the recomputed code mean or standard deviation differs from the stored
one (1e-9): the split on this machine is then not the one the model was trained on. Everything
else in the file (weights, config, metrics) is kept as it was; the output is written atomically.
It also prints the smallest volume per atom the sampler's defaults then allow (``smallest_volumes``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from crystalforge.api import load_dataset
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.lattice import MIN_VOLUME_FRACTION
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.diffusion import LatticeDDPM
from crystalforge.io.atomic import atomic_write
from crystalforge.io.torch_files import read_torch_file


def with_code_range(payload: dict[str, object]) -> dict[str, object]:
    """``payload`` (a model file's contents) with the code range of its training split in its statistics."""
    config, stored = payload.get("config"), payload.get("dataset_stats")
    if not isinstance(config, dict) or not isinstance(stored, dict):
        raise ValueError("not a model file with a config and dataset statistics")
    data = config["data"]
    if data.get("limit") is not None:
        raise ValueError(f"the model was trained on the first {data['limit']} structures only; refusing to guess them")
    crystals = load_dataset(data["dataset"], data["train_split"], data.get("root"))
    fresh = compute_dataset_stats(list(crystals))
    if config.get("init_from"):
        raise ValueError("a fine-tuned model keeps its base model's lattice frame: give the base its range instead")
    for key in ("lattice_code_mean", "lattice_code_std"):
        if stored.get(key) is None:
            raise ValueError(f"its statistics have no {key} (saved before it existed): retrain or use a newer file")
        if not np.allclose(np.asarray(stored[key]), np.asarray(getattr(fresh, key)), rtol=0, atol=1e-9):
            raise ValueError(f"{data['dataset']}/{data['train_split']} here gives another {key} than the model's")
    stats = dict(stored)
    stats["lattice_code_min"] = list(fresh.lattice_code_min or ())
    stats["lattice_code_max"] = list(fresh.lattice_code_max or ())
    return {**payload, "dataset_stats": stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model.pt written by crystalforge train")
    parser.add_argument("--out", type=Path, required=True, help="where to write the new file")
    args = parser.parse_args(argv)
    try:
        payload = read_torch_file(args.model)
        if not isinstance(payload, dict):
            raise ValueError("not a model file")
        new = with_code_range(payload)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {args.model}: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "wb") as handle:
        torch.save(new, handle)
    stats = new["dataset_stats"]
    assert isinstance(stats, dict)
    low, high = np.round(stats["lattice_code_min"], 3), np.round(stats["lattice_code_max"], 3)
    print(f"{args.out}: code range {low} .. {high}")
    plain, clipped = smallest_volumes(DatasetStats.from_dict(stats))
    print(f"smallest volume per atom the sampler allows, with the flat-cell floor (V/abc >= {MIN_VOLUME_FRACTION}): "
          f"{plain:.3g} A^3 with the +-10 SD clip alone, {clipped:.3g} A^3 with the data's range")  # fmt: skip
    return 0


def smallest_volumes(stats: DatasetStats) -> tuple[float, float]:
    """V/N of the smallest cell ``LatticeDDPM``'s defaults can return: its ±SD clip alone, and with the range.

    ``V/N = (V / abc) · exp(Σ length codes)``; the flat-cell floor bounds the first factor by
    ``MIN_VOLUME_FRACTION``, each clip bounds the three length codes from below.
    """
    ddpm = LatticeDDPM(stats)
    mean, std = ddpm.standardizer.mean[:3], ddpm.standardizer.std[:3]
    assert ddpm.clip_denoised is not None
    assert ddpm.data_margin is not None
    bounds = ddpm.standardizer.bounds(mean, ddpm.data_margin)
    if bounds is None:
        raise ValueError("the statistics carry no code range")
    plain = float((mean - ddpm.clip_denoised * std).sum().exp())
    clipped = float((mean + std * bounds[0][:3]).sum().exp())
    return MIN_VOLUME_FRACTION * plain, MIN_VOLUME_FRACTION * clipped


if __name__ == "__main__":
    raise SystemExit(main())
