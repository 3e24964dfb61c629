"""The live view of a running sweep: a progress bar on a terminal, one line per event elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """A snapshot for the live display, kept by the coordinator; counts are over the whole study."""

    study: str
    n_trials: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0                 # retries queued
    retried: int = 0                 # failed attempts replaced by a retry
    best_value: float | None = None
    best_number: int | None = None
    started: float = field(default_factory=time.monotonic)
    timeout: float | None = None
    gpu_hours: float | None = None           # GPU time spent by the study so far (when budgeted)
    gpu_budget: float | None = None
    stopping: bool = False
    stop_reason: str = ""            # a budget that ended the launching (timeout, GPU hours)
    last: str = ""                   # one line about the latest event

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    def summary(self, best: Any, objectives: list[str]) -> dict[str, Any]:
        """What `sweeps run` prints at the end; ``best``: the trial handed over (a FrozenTrial) or None."""
        from sweeps.study import first_value, full_params

        return {
            "study": self.study, "n_trials": self.n_trials, "complete": self.complete, "pruned": self.pruned,
            "failed": self.failed, "retried": self.retried,
            "best_value": first_value(best) if best is not None else self.best_value,
            "best_trial": best.number if best is not None else self.best_number,
            "best_params": full_params(best) if best is not None else None,     # searched and fixed
            "elapsed_seconds": round(self.elapsed, 1), "budget_met": self.finished >= self.n_trials,
            "gpu_hours": self.gpu_hours, "gpu_hours_budget": self.gpu_budget,
            "stopped_by": self.stop_reason or None, "objectives": objectives,
        }

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


ProgressCallback = Callable[[Progress], None]


def _best(p: Progress) -> str:
    return "-" if p.best_value is None else f"{p.best_value:.4f} (trial {p.best_number})"


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def line(p: Progress) -> str:
    left = p.n_trials - p.finished
    budget = f"{left} trials left" + (f", {_clock(max(0, p.timeout - p.elapsed))} of timeout" if p.timeout else "")
    if p.gpu_budget is not None:
        budget += f", GPU {p.gpu_hours or 0:.3f} of {p.gpu_budget:g} h"
    return (f"[{p.finished}/{p.n_trials}] complete {p.complete} | pruned {p.pruned} | failed {p.failed} | "
            f"running {p.running}{f' | retried {p.retried}' if p.retried else ''} | best {_best(p)} | "
            f"{_clock(p.elapsed)} elapsed | {budget}")


class LiveProgress:
    """Rich progress bar while attached to a terminal; plain lines (for logs and CI) otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._last = ""

    def __enter__(self) -> LiveProgress:
        if self.tty and not self.quiet:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._progress = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[detail]}"),
                                 console=Console(stderr=True), refresh_per_second=4)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def __call__(self, p: Progress) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            gpu = f"GPU {p.gpu_hours or 0:.3f}/{p.gpu_budget:g} h " if p.gpu_budget is not None else ""
            detail = (f"complete {p.complete} pruned {p.pruned} failed {p.failed} running {p.running} "
                      f"best {_best(p)} {gpu} {p.last}")
            if self._task is None:
                self._task = self._progress.add_task(p.study, total=p.n_trials, detail=detail)
            self._progress.update(self._task, completed=p.finished, detail=detail)
            return
        if p.last and p.last != self._last:
            print(f"{p.last:<50} {line(p)}", file=sys.stderr, flush=True)
            self._last = p.last
