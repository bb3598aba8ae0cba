"""Fuzz the input paths with malformed inputs; count crashes, hangs and errors that do not name the file.

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/fuzz_inputs.py --n 2000 --seed 0 --json fuzz.json

Input ``i`` is drawn from ``random.Random(f"{seed}:{i}")`` (``tests/reliability/generators.py``), so
``--only I`` replays one input and ``--keep DIR`` leaves its files there. Each input goes to:

- a malformed structure file (80 %): ``reader`` (``io.files.iter_records``) and one command of
  ``convert`` (to a file or a folder of each format) / ``evaluate`` (fast options: no reference,
  novelty, coverage or relaxation) / ``predict`` (the shipped predictor, ``--out x.json``), run
  through ``crystalforge.cli.main.main(argv)`` in this process (the worker);
- command lines (12 %): ``parse`` (random tokens through the parser of every subcommand) and
  ``options`` (``convert``/``evaluate``/``predict`` run on a good file with one to four of the
  command's options, values valid, out of range, not numbers, or paths to missing, garbage or
  malformed files);
- a damaged candidate store (8 %): ``ase.db`` (``design.store.CandidateStore``: open, read every row).

Every input runs in a worker process forked from this one after the imports and a warm-up, with a
time limit (``--timeout``): an input that overruns it counts as a hang, and the worker is killed
and forked again. Exit status 1 when any input crashed, hung, lost a good record, gave an error that
does not name its file, or left a record with neither a result nor an error (``silent``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time
from collections import Counter, defaultdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.reliability.checks import (  # noqa: E402 - after the path set-up
    EVALUATE_FAST,
    Outcome,
    check_command,
    check_options,
    check_parse,
    check_reader,
    check_store,
    run_main,
)
from tests.reliability.generators import (  # noqa: E402
    argv_tokens,
    db_sample,
    option_argv,
    random_bytes,
    structure_sample,
)
from tests.reliability.malformed import Sample, base_records, to_cif  # noqa: E402

STATUSES = ("accepted", "clean", "crash", "hang", "unnamed", "lost", "silent")
FAILURES = STATUSES[2:]
ENTRY_POINTS = ("reader", "convert", "evaluate", "predict", "parse", "options", "ase.db")
MEMORY_HEADROOM = 6 << 30
"""Bytes of address space a worker may add to what it inherits (a runaway allocation fails, not the machine)."""
CONVERT_TARGETS = ("x.extxyz", "x.cif", "x.cftxt", "x.npz", "x.vasp", "x.cif --symmetrize", "d/ --to cif",
                   "d/ --to extxyz", "d/ --to poscar", "d/ --to text", "d/ --to npz")  # fmt: skip
"""Output of a ``convert`` input: a file (its suffix names the format) or a folder with ``--to``."""
Task = tuple[str, int, Sample | None, list[str]]  # entry point, input index, file to write, argv / tokens


def tasks_for(seed: int, i: int) -> list[Task]:
    """The entry points input ``i`` runs through (see the module docstring)."""
    rng = random.Random(f"{seed}:{i}")
    roll = rng.random()
    if roll < 0.8:
        sample = structure_sample(rng)
        command = rng.choice(("convert", "evaluate", "predict"))
        target = rng.choice(CONVERT_TARGETS)
        return [("reader", i, sample, []), (command, i, sample, [*target.split()] if command == "convert" else [])]
    if roll < 0.92:
        garbage = Sample("garbage.pt", random_bytes(rng), "options")
        return [("parse", i, None, argv_tokens(rng)), ("options", i, garbage, option_argv(rng))]
    return [("ase.db", i, db_sample(rng), [])]


def _fill(token: str, values: dict[str, Any]) -> str:
    for key, value in values.items():
        token = token.replace(key, str(value))
    return token


def _argv(task: Task, folder: Path, path: Path | None) -> list[str]:
    """The command line of a CLI task, with its placeholders filled in."""
    entry, _, _, extra = task
    if entry == "options":
        good, bad = folder / "good.cif", folder / "bad.cif"
        good.write_text(to_cif(base_records()[1]))
        bad.write_text(to_cif(base_records()[1]).replace("Si", "Xx"))
        fill = {"{good}": good, "{bad}": bad, "{dir}": folder, "{missing}": folder / "no", "{garbage}": path}
        command, *rest = [_fill(t, fill) for t in extra]
        argv = [command, str(good), *rest]
        if command == "convert":
            argv.append(str(folder / "out.extxyz"))
        return argv + (list(EVALUATE_FAST) if command == "evaluate" else [])
    assert path is not None
    if entry == "convert":
        target, *options = extra
        return ["convert", str(path), f"{folder}/{target}", *options]  # a folder keeps its "/"
    if entry == "evaluate":
        return ["evaluate", str(path), *EVALUATE_FAST]
    return ["predict", str(path), "--out", str(folder / "predicted.json")]


def run_task(task: Task, root: Path) -> Outcome:
    """One task, in the worker."""
    from crystalforge.cli.main import build_parser

    entry, i, sample, extra = task
    folder = Path(tempfile.mkdtemp(prefix=f"{i}-", dir=root))
    path = sample.write(folder) if sample is not None else None
    if entry == "reader":
        assert path is not None
        assert sample is not None
        return check_reader(path, sample)
    if entry == "parse":
        return check_parse(extra, build_parser)
    if entry == "ase.db":
        assert path is not None
        return check_store(path)
    argv = _argv(task, folder, path)
    if entry == "options":
        return check_options(argv)
    assert path is not None
    output = {"convert": folder / extra[0] if extra else None, "predict": folder / "predicted.json"}.get(entry)
    return check_command(argv, path, sample, output)


def _worker(conn: Connection, root: Path) -> None:
    pages = int(Path("/proc/self/statm").read_text().split()[0])
    soft = pages * os.sysconf("SC_PAGE_SIZE") + MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (soft, resource.RLIM_INFINITY))
    while True:
        task = conn.recv()
        if task is None:
            return
        conn.send(run_task(task, root))


class Watchdog:
    """A forked worker that runs one task at a time; one that overruns ``timeout`` is killed and replaced."""

    def __init__(self, root: Path, timeout: float) -> None:
        self.root, self.timeout = root, timeout
        self._context = multiprocessing.get_context("fork")
        self._start()

    def _start(self) -> None:
        self.conn, child = self._context.Pipe()
        self.process = self._context.Process(target=_worker, args=(child, self.root))  # not daemonic: it may fork
        self.process.start()

    def run(self, task: Task) -> Outcome:
        self.conn.send(task)
        if self.conn.poll(self.timeout):
            try:
                result: Outcome = self.conn.recv()
                return result
            except EOFError:
                pass
        died = not self.process.is_alive()
        self.process.kill()
        self.process.join()
        self._start()
        if died:
            return Outcome("crash", f"worker died (exit {self.process.exitcode}): killed by memory or a signal")
        return Outcome("hang", f"no result after {self.timeout:g} s")

    def close(self) -> None:
        """Stop the worker (killed if it does not stop at once)."""
        if self.process.is_alive():
            self.conn.send(None)
            self.process.join(5)
        self.process.kill()
        self.process.join()


def warm_up(root: Path) -> None:
    """Import and run each command once in this process, so forked workers start warm."""
    import torch

    torch.set_num_threads(1)
    good = root / "warm.cif"
    good.write_text(to_cif(base_records()[1]))
    for argv in (["convert", str(good), str(root / "warm.extxyz")], ["evaluate", str(good), *EVALUATE_FAST],
                 ["predict", str(good)]):  # fmt: skip
        code, text = run_main(argv)
        if code not in (0, None):
            raise SystemExit(f"warm-up failed: crystalforge {' '.join(argv)} -> {code}\n{text}")
    from crystalforge.design.store import CandidateStore  # noqa: F401 - imported before the fork


def fuzz(n: int, seed: int, timeout: float, only: list[int] | None, keep: Path | None) -> dict[str, Any]:
    """Run the inputs; return the counts per entry point and examples of every failure."""
    counts: dict[str, Counter[str]] = {e: Counter() for e in ENTRY_POINTS}
    examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    kinds: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        root = keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        warm_up(root)
        watchdog = Watchdog(root, timeout)
        t0 = time.perf_counter()
        indices = only if only is not None else list(range(n))
        try:
            for done, i in enumerate(indices, start=1):
                for task in tasks_for(seed, i):
                    entry, _, sample, extra = task
                    kinds[sample.mutation.split(":")[0] if sample else entry] += 1
                    outcome = watchdog.run(task)
                    counts[entry][outcome.status] += 1
                    if outcome.status in FAILURES and len(examples[outcome.status]) < 25:
                        examples[outcome.status].append({"input": i, "entry": entry, "argv": extra,
                                                         "mutation": sample.mutation if sample else "",
                                                         "detail": outcome.detail})  # fmt: skip
                if done % 100 == 0:
                    print(f"  {done}/{len(indices)} inputs, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        finally:
            watchdog.close()
        seconds = time.perf_counter() - t0
    return {"n": len(indices), "seed": seed, "timeout_s": timeout, "seconds": round(seconds, 1),
            "counts": {e: {s: c[s] for s in STATUSES} | {"inputs": sum(c.values())} for e, c in counts.items()},
            "kinds": dict(kinds.most_common()), "examples": examples}  # fmt: skip


def table(result: dict[str, Any]) -> str:
    """The counts as a markdown table."""
    head = "| entry point | inputs | " + " | ".join(STATUSES) + " |"
    lines = [head, "|" + "---|" * (len(STATUSES) + 2)]
    total: Counter[str] = Counter()
    for entry, c in result["counts"].items():
        total.update(c)
        lines.append(f"| {entry} | {c['inputs']} | " + " | ".join(str(c[s]) for s in STATUSES) + " |")
    lines.append(f"| **all** | {total['inputs']} | " + " | ".join(str(total[s]) for s in STATUSES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="number of inputs (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per entry point and input (a hang)")
    parser.add_argument("--only", type=int, nargs="+", help="replay these input indices only")
    parser.add_argument("--keep", type=Path, help="leave the input files in this folder")
    parser.add_argument("--json", type=Path, help="write counts and failure examples here")
    args = parser.parse_args(argv)
    result = fuzz(args.n, args.seed, args.timeout, args.only, args.keep)
    print(f"{result['n']} inputs, seed {args.seed}, {result['seconds']} s, limit {args.timeout:g} s per input")
    print(table(result))
    for status, items in result["examples"].items():
        print(f"\n## {status} (first {min(len(items), 3)} of {len(items)} kept)")
        for item in items[:3]:
            print(f"- input {item['input']} {item['entry']} {item['mutation']} {item['argv']}\n{item['detail']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    failures = sum(c[s] for c in result["counts"].values() for s in FAILURES)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
