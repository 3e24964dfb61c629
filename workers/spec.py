"""The plain data that crosses between the control plane and the workers.

Defined once, here, so that both sides agree; nothing in this module imports
TensorFlow, Ray or Optuna, so the control plane can use it freely.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

METRICS = {"val_accuracy": "maximize", "val_loss": "minimize", "macro_f1": "maximize"}   # per epoch -> natural goal
# What a trial measures once, at its best epoch (or, for the sizes, before its first): -> natural goal.
MEASURES = {"latency_ms_per_image": "minimize", "param_count": "minimize", "model_bytes": "minimize",
            "macro_f1": "maximize", "accuracy": "maximize"}
SIZES = ("param_count", "model_bytes")     # known once the model is built: a constraint on them rejects it untrained


def better(value: float, best: float | None, maximize: bool) -> bool:
    """Whether ``value`` beats ``best`` (anything beats ``None``): the one "best so far" rule."""
    return best is None or (value > best if maximize else value < best)


class Decision(str, enum.Enum):
    """What the coordinator answers to a per-epoch report."""

    CONTINUE = "continue"
    PRUNE = "prune"


class TrialState(str, enum.Enum):
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"


class Failure(str, enum.Enum):
    """Why a trial failed, for code to act on (the reason says it for people)."""

    ERROR = "error"                       # an exception in training: retried, counted as a fault
    WORKER_LOST = "worker_lost"           # its process or node died: retried, counted as a fault
    DATASET = "dataset"                   # the worker cannot read the dataset: the sweep stops
    INTERRUPTED = "interrupted"           # stopped by the coordinator (Ctrl-C): retried, not a fault
    COORDINATOR_LOST = "coordinator_lost"  # its coordinator stopped beating: retried, not a fault
    STALLED = "stalled"                   # no report for longer than the stall limit: process replaced, retried

    @property
    def is_fault(self) -> bool:
        """Counts towards ``recovery.max_retries`` of its configuration."""
        return self in (Failure.ERROR, Failure.WORKER_LOST, Failure.STALLED)


@dataclass(frozen=True)
class ModelBuilder:
    """A user's model function: ``module:function`` installed on the workers, or a file's source shipped here."""

    entry: str                        # "package.module:function", or "file_stem:function" for a file
    source: str | None = None         # the file's text (None: import ``module`` where the trial runs)
    file: str | None = None           # where the file was read, for tracebacks


@dataclass(frozen=True)
class Bound:
    """A constraint on one measure: feasible when ``low <= value <= high`` (either side may be open)."""

    measure: str
    low: float | None = None
    high: float | None = None

    def violation(self, value: float) -> float:
        """Optuna's constraint value: <= 0 when met, else how far out, relative to the bound."""
        over = (value - self.high) / max(abs(self.high), 1e-12) if self.high is not None else -math.inf
        under = (self.low - value) / max(abs(self.low), 1e-12) if self.low is not None else -math.inf
        return max(over, under, -1.0)


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs to train one trial; no storage, no secrets. Built by ``SweepConfig.trial_spec``."""

    number: int
    params: dict[str, Any]
    epochs: int
    seed: int
    metric: str = "val_accuracy"
    maximize: bool = True             # the metric's goal: which epoch is best, decided once in the config
    flip: bool = False                # the dataset allows horizontal flips
    threads: int = 1                  # CPU threads TensorFlow may use
    checkpoint: bytes | None = None   # resume from this (workers/checkpoint.py) instead of epoch 0
    save_checkpoints: bool = True     # send a checkpoint with every epoch report
    deterministic: bool = False       # TensorFlow op determinism (slower; repeats values exactly)
    folds: int = 0                    # k-fold cross-validation: k models in turn, steps 1..k*epochs
    mixed_precision: bool = False     # mixed_float16 on a GPU, mixed_bfloat16 on a CPU
    jit_compile: bool = False         # XLA
    steps_per_execution: int = 1
    model: ModelBuilder | None = None     # the user's model; None: the built-in ``architecture``
    limits: tuple[Bound, ...] = ()        # constraints on SIZES: a model that breaks one is not trained


@dataclass(frozen=True)
class EpochReport:
    number: int
    epoch: int                  # 1-based: the step stored in Optuna
    value: float
    logs: dict[str, float] = field(default_factory=dict)
    checkpoint: bytes | None = None   # the state after this epoch, for a retry to resume from


@dataclass(frozen=True)
class TrialResult:
    number: int
    state: TrialState
    value: float | None          # best epoch's metric (None when nothing was measured)
    epochs_run: int
    reason: str = ""             # why it was pruned or failed
    metrics: dict[str, Any] = field(default_factory=dict)
    failure: Failure | None = None   # for FAILED: what kind of failure


class Reporter(Protocol):
    """The worker's only channel to the coordinator."""

    def report(self, report: EpochReport) -> Decision: ...
