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
from crystalforge.execution.interrupt import catching_interrupts, check_interrupted, interrupt_handled

__all__ = [
    "Executor", "ExecutorConfig", "ProcessExecutor", "RayExecutor", "SerialExecutor", "catching_interrupts",
    "check_interrupted", "interrupt_handled", "make_executor",
]  # fmt: skip
