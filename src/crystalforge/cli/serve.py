"""``crystalforge serve``: browse one or several design runs in the browser, live (or write their reports)."""

from __future__ import annotations

import argparse
import sys
import textwrap

from crystalforge.cli.options import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``."""
    p = add_parser(
        subparsers,
        "serve",
        help="browse design runs in the browser: funnel, plots, top candidates in 3D, CIFs (live)",
        epilog=textwrap.dedent(
            """\
            RUN: a design run folder (written by `crystalforge design`: candidates.db, design.json, top/).
            Each page is rebuilt from the run's database on every load, so a running design job can be
            watched by reloading. The pages are the runs' self-contained reports (RUN/report.html).

            examples:
              crystalforge serve runs/gap-design
              crystalforge serve runs/gap-* --port 8080 --open
              crystalforge serve runs/a runs/b --host 0.0.0.0     # reachable from other machines
              crystalforge serve runs/gap-design --write          # only (re)write RUN/report.html"""
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="design run folders")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--limit", type=int, default=50, help="top candidates listed per run (default 50)")
    p.add_argument("--open", action="store_true", help="open the index in the default web browser")
    p.add_argument("--write", action="store_true", help="write each RUN/report.html and exit (no server)")


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C, or write the reports with --write."""
    from crystalforge.api import check_run, serve_runs, write_report

    folders, problems = [], []
    for folder in args.runs:  # every bad folder is named, before any work
        try:
            folders.append(check_run(folder))
        except FileNotFoundError as exc:
            problems.append(str(exc))
    if problems:
        raise FileNotFoundError("; ".join(problems))
    if args.write:
        for folder in folders:
            print(f"wrote {write_report(folder, limit=args.limit)}")
        return 0

    def ready(url: str) -> None:
        print(f"serving {len(folders)} run(s) at {url} (Ctrl-C to stop)", flush=True)
        if args.open:
            import webbrowser

            webbrowser.open(url)

    try:
        serve_runs(folders, host=args.host, port=args.port, limit=args.limit, on_ready=ready)
    except OSError as exc:  # the port is taken, the address is not this machine's
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
