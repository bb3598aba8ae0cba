"""``crystalforge models``: the shipped models and their defaults."""

from __future__ import annotations

import argparse

from crystalforge.cli.options import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models``."""
    add_parser(subparsers, "models", help="list the shipped models", epilog="example:\n  crystalforge models")


def _kind(card: dict) -> str:
    """The card's kind, with its family where that is not the joint flow/diffusion one: ``cdvae (flow)``."""
    family = card.get("family", "joint")
    if family in ("joint", card["kind"]):
        return str(card["kind"])
    return f"{family} ({card['kind']})"


def run(args: argparse.Namespace) -> int:
    """List the shipped models, one line each."""
    from crystalforge import api

    cards = api.list_models()
    if not cards:
        print("no shipped models in this installation")
        return 0
    predictors = {k: c for k, c in cards.items() if c.get("kind") == "predictor"}
    models = {k: c for k, c in cards.items() if k not in predictors}
    wide = max(map(len, cards)) + 2  # columns as wide as the longest name and kind
    kinds = {k: _kind(c) for k, c in models.items()}
    kind = max(map(len, kinds.values()), default=4) + 2
    print(f"{'name':<{wide}}{'task':<9}{'kind':<{kind}}{'dataset':<18}{'steps':>6}{'anti-ann.':>10}  description")
    for name, card in sorted(models.items()):
        scale = card.get("default_anti_annealing")
        if scale is None:
            shown = "-"
        elif isinstance(scale, dict):  # per field, in --anti-annealing's syntax
            shown = ",".join(f"{k}={v:g}" for k, v in scale.items())
        else:
            shown = f"{scale:g}"
        print(
            f"{name:<{wide}}{card['task']:<9}{kinds[name]:<{kind}}{card['dataset']:<18}{card['default_steps']:>6}"
            f"{shown:>10}  {card.get('description', '')}"
        )
    if predictors:
        print(f"\n{'predictor':<{wide}}{'dataset':<18}properties")
        for name, card in sorted(predictors.items()):
            print(f"{name:<{wide}}{card['dataset']:<18}{', '.join(card['properties'])}")
    return 0
