"""When to launch another trial, and when a sweep is over: trials to finish, a timeout, GPU hours.

Counts are over the whole study (every coordinator's trials), read afresh
under the launch lock, so coordinators sharing a study finish exactly
``n_trials`` configurations between them.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

from sweeps import finalists, space
from sweeps.config import SweepConfig
from sweeps.progress import Progress
from sweeps.recovery import Tally
from sweeps.study import REASON


class Budget:
    """The stored budget of a sweep; ``progress`` carries the stop once one is reached."""

    def __init__(self, config: SweepConfig, progress: Progress) -> None:
        self.config = config
        self.progress = progress
        self.failed_out = False           # stopped by budget.max_failed_trials
        self.reserve = 0.0                # seconds of the timeout kept for the finalists (finalists.reserve_seconds)
        self.reserve_from = 0             # complete trials the reserve was computed from

    @staticmethod
    def trials(config: SweepConfig) -> int:
        """Configurations to finish: ``n_trials``, capped at the grid's size under the grid sampler."""
        if config.sampler["name"] == "grid":
            return min(config.n_trials, space.grid_size(config.parameters))
        return config.n_trials

    def _stop(self, why: str) -> bool:
        p = self.progress
        p.stopping, p.last = True, why
        p.stop_reason = why
        return False

    def may_launch(self, tally: Tally) -> bool:
        """Room for one more trial: no stop asked for, no time, GPU or failure budget spent, configurations left
        (a new one only while the time left exceeds what the finalists need: ``reserve`` seconds)."""
        if not self.open(tally):
            return False
        if tally.waiting > 0:
            return True
        p = self.progress
        return not self.in_reserve() and tally.finished + tally.running < p.n_trials

    def plan_reserve(self, durations: list[float], trials: list[FrozenTrial], maximize: bool) -> None:
        """The finalists' reserve, recomputed only when another trial completed: it rests on the complete trials
        alone, and choosing the candidates is a pass over the whole study (not one per count)."""
        if len(durations) != self.reserve_from:
            self.reserve_from = len(durations)
            self.reserve = finalists.reserve_seconds(self.config, durations, trials, maximize)

    def time_left(self) -> float | None:
        """Seconds to the timeout, or None without one."""
        timeout = self.config.timeout
        return None if timeout is None else max(0.0, timeout - self.progress.elapsed)

    def in_reserve(self) -> bool:
        """The timeout's last ``reserve`` seconds: the finalists' time, when no new trial starts."""
        timeout = self.config.timeout
        return timeout is not None and self.reserve > 0 and self.progress.elapsed >= timeout - self.reserve

    def open(self, tally: Tally) -> bool:
        """No stop asked for, and no time, GPU or failure budget spent."""
        p, timeout = self.progress, self.config.timeout
        if p.stopping:
            return False
        if tally.failed >= self.config.failure_limit:
            self.failed_out = True
            return self._stop(f"{tally.failed} trials failed for good (budget.max_failed_trials: "
                              f"{self.config.failure_limit}); letting running trials finish")
        if timeout is not None and p.elapsed >= timeout:
            return self._stop(f"timeout of {timeout:g}s reached; letting running trials finish")
        if p.gpu_budget is not None and p.gpu_hours is not None and p.gpu_hours >= p.gpu_budget:
            return self._stop(f"GPU-hour budget of {p.gpu_budget:g} reached ({p.gpu_hours:.4f} spent); "
                              "letting running trials finish")
        return True

    def met(self, tally: Tally) -> bool:
        """Nothing is left to run anywhere (the caller has nothing running itself)."""
        if self.progress.stopping:
            return True
        return tally.running == 0 and not self.may_launch(tally)

    def failed_sweep(self, trials: list[FrozenTrial]) -> str | None:
        """Why the sweep failed as a whole, when it did: the failure budget spent, or every trial failed."""
        p, name, limit = self.progress, self.config.study, self.config.failure_limit
        if self.failed_out:
            what = f"stopped: {p.failed} trials failed for good (budget.max_failed_trials: {limit})"
            fix = f"fix the cause, then `sweeps resume {name} --max-failed-trials {p.failed + limit}`"
        elif p.failed and not (p.complete or p.pruned):
            what, fix = f"every trial failed ({p.failed})", "fix the cause and run the sweep again"
        else:
            return None
        fails = [t for t in trials if t.state == TrialState.FAIL]
        last = fails[-1].user_attrs.get(REASON, "no reason stored") if fails else "none stored"
        return f"sweep {name} {what}; the last failure: {last}; {fix}"

    def slots(self, tally: Tally) -> int:
        """Trial slots worth starting: ``parallel``, or fewer when fewer configurations are left."""
        return max(1, min(self.config.parallel, max(self.progress.n_trials - tally.finished, tally.waiting)))
