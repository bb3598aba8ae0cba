"""Write a copy of a model file with options of its stored ``model:`` config changed (weights untouched).

    python scripts/set_model_option.py mp_20-cdvae runs/cdvae-draws32/model.pt csp_latent_draws=32

For options that act at sampling time only (``csp_latent_draws``, ``latent_prior`` of the cdvae
family...), so a benchmark can compare settings of one set of weights. The copy is loaded and
built before it is kept: an unknown option or a value the family refuses is an error naming it,
and an option that would change the weights' shapes fails to load. The output is written atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from crystalforge.io.atomic import atomic_write
from crystalforge.io.torch_files import read_torch_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a shipped model name or a model.pt")
    parser.add_argument("out", type=Path)
    parser.add_argument("options", nargs="+", help="KEY=VALUE under model: (as --set; VALUE read as YAML)")
    args = parser.parse_args()

    from crystalforge.config import apply_overrides
    from crystalforge.training.adapters import resolve_init
    from crystalforge.training.loading import load_checkpoint_model

    try:
        source = resolve_init(args.model)
        payload = read_torch_file(source)
        payload["config"]["model"] = apply_overrides(payload["config"]["model"], args.options)
    except (FileNotFoundError, ValueError) as exc:  # ConfigError is a ValueError: a malformed KEY=VALUE
        sys.exit(f"{args.model}: {exc}")
    try:
        load_checkpoint_model(payload)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        sys.exit(f"{source} with {' '.join(args.options)}: {exc}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "wb") as handle:
        torch.save(payload, handle)
    print(f"wrote {args.out} ({source} with {' '.join(args.options)})")


if __name__ == "__main__":
    main()
