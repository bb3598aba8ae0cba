"""Where work runs: one ``Executor`` for every parallel stage (serial, local processes or Ray)."""

from __future__ import annotations

from crystalforge.execution.executor import (
    Executor,
    ExecutorConfig,
    ProcessExecutor,
    RayExecutor,
    SerialExecutor,
    make_executor,
)

__all__ = ["Executor", "ExecutorConfig", "ProcessExecutor", "RayExecutor", "SerialExecutor", "make_executor"]
