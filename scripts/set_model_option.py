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
import yaml

from crystalforge.io.atomic import atomic_write
from crystalforge.io.torch_files import read_torch_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a shipped model name or a model.pt")
    parser.add_argument("out", type=Path)
    parser.add_argument("options", nargs="+", help="KEY=VALUE (VALUE read as YAML: 32, posterior, [1, 2])")
    args = parser.parse_args()

    from crystalforge.pretrained import model_path
    from crystalforge.training.loading import load_checkpoint_model

    source = model_path(args.model) or Path(args.model)
    payload = read_torch_file(source)
    model_config = payload["config"]["model"]
    for option in args.options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            sys.exit(f"{option!r}: expected KEY=VALUE")
        model_config[key] = yaml.safe_load(value)
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
