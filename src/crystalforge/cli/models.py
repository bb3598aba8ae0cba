"""``crystalforge models``: the shipped models and their defaults."""

from __future__ import annotations

import argparse

from crystalforge.cli.options import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models``."""
    add_parser(subparsers, "models", help="list the shipped models", epilog="example:\n  crystalforge models")


def run(args: argparse.Namespace) -> int:
    """List the shipped models, one line each."""
    from crystalforge import api

    cards = api.list_models()
    if not cards:
        print("no shipped models in this installation")
        return 0
    predictors = {k: c for k, c in cards.items() if c.get("kind") == "predictor"}
    print(f"{'name':<22}{'task':<9}{'kind':<11}{'dataset':<18}{'steps':>6}{'anti-ann.':>10}  description")
    for name, card in sorted(cards.items()):
        if name in predictors:
            continue
        scale = card.get("default_anti_annealing")
        if scale is None:
            shown = "-"
        elif isinstance(scale, dict):  # per field, in --anti-annealing's syntax
            shown = ",".join(f"{k}={v:g}" for k, v in scale.items())
        else:
            shown = f"{scale:g}"
        print(
            f"{name:<22}{card['task']:<9}{card['kind']:<11}{card['dataset']:<18}{card['default_steps']:>6}"
            f"{shown:>10}  {card.get('description', '')}"
        )
    if predictors:
        print(f"\n{'predictor':<22}{'dataset':<18}properties")
        for name, card in sorted(predictors.items()):
            print(f"{name:<22}{card['dataset']:<18}{', '.join(card['properties'])}")
    return 0
