"""One ``Executor`` for every parallel stage: serial, local processes, or a Ray cluster.

Fingerprints, structure matching, symmetry analysis, dataset parsing and relaxation all hand their
work to an executor instead of owning a process pool, so the same code runs in-process, on the
local cores or on a cluster, chosen by one setting (``--workers N``, ``--ray auto|ADDRESS``).

Every executor maps a picklable top-level function over items **in order** and may run an
``initializer(*initargs)`` once per worker first (a relaxer loads its MLIP there; a featurizer
its matminer objects). Pools start on the first call and are kept until ``close()`` (or the end
of a ``with`` block), so a worker's expensive state is built once per run, not once per call.

``execution.time_limit`` bounds each call of a per-structure step; it composes with any executor.

This package imports nothing else from crystalforge; Ray is an optional extra, imported only when
a ``RayExecutor`` starts.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")
E = TypeVar("E", bound="_Base")

Initializer = Callable[..., object]

logger = logging.getLogger(__name__)


class Executor(Protocol):
    """Runs ``fn`` over items, in order; ``workers`` says how many run at once."""

    @property
    def workers(self) -> int:
        """How many items run at once."""

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, chunksize: int = 1) -> list[R]:
        """``[fn(x) for x in items]``, computed by the executor's workers."""

    def close(self) -> None:
        """Stop the workers (a later ``map`` starts them again)."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class ExecutorConfig:
    """Which executor: ``workers`` local processes (1 = in this process) or a Ray cluster.

    Attributes:
        workers: parallel workers (local processes, or Ray actors when ``ray`` is set).
        ray: None for local execution; ``"auto"`` joins a running cluster (or starts one on this
            machine when none runs), ``"local"`` always starts one here, any other string is a
            cluster address (``"ray://host:10001"``). Without Ray installed this is an error at once.
        start_method: multiprocessing start method for local processes (None: the platform's
            default; ``"spawn"`` for work that loads torch models in the workers).

    """

    workers: int = 1
    ray: str | None = None
    start_method: str | None = None

    @classmethod
    def of(cls, value: ExecutorConfig | int) -> ExecutorConfig:
        """``value`` itself, or a config for that many local workers."""
        return value if isinstance(value, ExecutorConfig) else cls(workers=int(value))

    @property
    def parallel(self) -> bool:
        """True when work leaves this process (several local workers, or Ray)."""
        return self.workers > 1 or self.ray is not None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.ray is not None:  # a missing Ray stops the command here, before any work
            from crystalforge.core.extras import require

            require("ray", "running work on a Ray cluster (--ray)")
        if self.start_method is not None and self.start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"unknown start method {self.start_method!r}")


class _Base:
    def __init__(self, workers: int, initializer: Initializer | None, initargs: Sequence[Any]) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._workers = workers
        self._initializer = initializer
        self._initargs = tuple(initargs)

    @property
    def workers(self) -> int:
        """How many items run at once."""
        return self._workers

    def close(self) -> None:
        """Nothing to stop (overridden by pooled executors)."""

    def __enter__(self: E) -> E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self._workers})"


class SerialExecutor(_Base):
    """Runs everything in this process (the initializer once, on the first ``map``)."""

    def __init__(self, *, initializer: Initializer | None = None, initargs: Sequence[Any] = ()) -> None:
        super().__init__(1, initializer, initargs)
        self._initialized = False

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, chunksize: int = 1) -> list[R]:
        """``[fn(x) for x in items]`` in this process."""
        if self._initializer is not None and not self._initialized:
            self._initializer(*self._initargs)
            self._initialized = True
        return [fn(x) for x in items]


class ProcessExecutor(_Base):
    """A local process pool, started on the first ``map`` and kept until ``close``."""

    def __init__(
        self,
        workers: int,
        *,
        initializer: Initializer | None = None,
        initargs: Sequence[Any] = (),
        start_method: str | None = None,
    ) -> None:
        super().__init__(workers, initializer, initargs)
        self._start_method = start_method
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, chunksize: int = 1) -> list[R]:
        """``[fn(x) for x in items]`` computed in the worker processes, in order."""
        work = list(items)
        if not work:
            return []
        if self._pool is None:
            context = None if self._start_method is None else multiprocessing.get_context(self._start_method)
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=context,
                initializer=self._initializer,
                initargs=self._initargs,
            )
        return list(self._pool.map(fn, work, chunksize=max(1, chunksize)))

    def close(self) -> None:
        """Shut the worker processes down."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class RayExecutor(_Base):
    """``workers`` Ray actors on a cluster; each runs the initializer once, then takes items in turn.

    A task whose actor dies is retried on a restarted actor (``max_restarts``/``max_task_retries``),
    so a lost worker loses no item and counts none twice; results come back in input order.
    """

    def __init__(
        self,
        workers: int,
        *,
        address: str = "auto",
        initializer: Initializer | None = None,
        initargs: Sequence[Any] = (),
        max_retries: int = 3,
    ) -> None:
        super().__init__(workers, initializer, initargs)
        from crystalforge.core.extras import require

        self._ray = require("ray", "running work on a Ray cluster (--ray)")
        self._address = address
        self._max_retries = max_retries
        self._actors: list[Any] | None = None

    def _start(self) -> list[Any]:
        ray = self._ray
        with _keep_signal_handlers():  # ray.init's SIGTERM handler exits 15 and outlives the cluster
            self._init_cluster()
        worker_class = ray.remote(max_restarts=self._max_retries, max_task_retries=self._max_retries)(_RayWorker)
        return [worker_class.remote(self._initializer, self._initargs) for _ in range(self._workers)]

    def _init_cluster(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            if self._address in ("auto", "local"):
                try:  # "auto": join the running cluster, else start one on this machine
                    if self._address == "local":
                        raise ConnectionError("a local cluster was asked for")
                    ray.init(address="auto", include_dashboard=False, log_to_driver=False)
                except ConnectionError:
                    ray.init(num_cpus=self._workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self._address, include_dashboard=False, log_to_driver=False)

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, chunksize: int = 1) -> list[R]:
        """``[fn(x) for x in items]`` on the actors, in input order."""
        work = list(items)
        if not work:
            return []
        if self._actors is None:
            self._actors = self._start()
        from ray.util import ActorPool

        pool = ActorPool(self._actors)
        return list(pool.map(lambda actor, item: actor.run.remote(fn, item), work))

    def close(self) -> None:
        """Stop the actors (the cluster keeps running)."""
        if self._actors is not None:
            for actor in self._actors:
                self._ray.kill(actor)
            self._actors = None


@contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    """Restore this process's SIGINT/SIGTERM handlers after the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class _RayWorker:
    """The body of one Ray actor: the initializer once, then one item per call."""

    def __init__(self, initializer: Initializer | None, initargs: Sequence[Any]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def run(self, fn: Callable[[Any], Any], item: Any) -> Any:
        return fn(item)


def make_executor(
    config: ExecutorConfig | int = 1,
    *,
    initializer: Initializer | None = None,
    initargs: Sequence[Any] = (),
    start_method: str | None = None,
) -> SerialExecutor | ProcessExecutor | RayExecutor:
    """The executor a config asks for (an int is a number of local workers).

    ``start_method`` is the caller's need (``"spawn"`` when workers load torch models); the
    config's own ``start_method``, when set, wins.
    """
    cfg = ExecutorConfig.of(config)
    if cfg.ray is not None:
        return RayExecutor(cfg.workers, address=cfg.ray, initializer=initializer, initargs=initargs)
    if cfg.workers == 1:
        return SerialExecutor(initializer=initializer, initargs=initargs)
    return ProcessExecutor(
        cfg.workers, initializer=initializer, initargs=initargs, start_method=cfg.start_method or start_method
    )


# ---- per-call time limits ----------------------------------------------------------------------------------
