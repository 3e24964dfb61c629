"""Which trials count towards the budget, which are lost, and which run again.

Every decision here is read from the study itself (trial states and user
attributes), so any coordinator on any machine reaches the same answer: a
retried configuration carries ``config_id`` (the number of its first trial),
``retry_of`` (the trial it replaces) and ``attempt``; a failure that has a
retry does not count, the retry does.
"""

from __future__ import annotations

import datetime
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.study import (
    ATTEMPT,
    CONFIG_ID,
    CONTINUES,
    FAILURE,
    FAULTS,
    FINALIST_OF,
    FORKED_FROM,
    REASON,
    RETRY_OF,
    config_id,
    feasible,
    first_value,
)
from workers.spec import Failure, better


@dataclass
class Tally:
    """Configurations by state over the whole study (all coordinators)."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0        # failures with no retry: final
    running: int = 0
    waiting: int = 0       # retries queued, not started yet
    retried: int = 0       # failures replaced by a retry
    continued: int = 0     # paused trials continued by a promotion (their continuation counts instead)

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


def retry_attrs(number: int, user_attrs: dict[str, Any], *, fault: bool, max_retries: int) -> dict[str, Any] | None:
    """The user attrs of the retry of a failed trial, or None when its retries are used up."""
    faults = int(user_attrs.get(FAULTS, 0)) + (1 if fault else 0)
    if faults > max_retries:
        return None
    return {RETRY_OF: number, CONFIG_ID: config_id(number, user_attrs),
            ATTEMPT: int(user_attrs.get(ATTEMPT, 1)) + 1, FAULTS: faults,
            **({FINALIST_OF: user_attrs[FINALIST_OF]} if FINALIST_OF in user_attrs else {})}


def enqueue_retry(study: optuna.Study, number: int, params: dict[str, Any], user_attrs: dict[str, Any], *,
                  fault: bool, max_retries: int) -> bool:
    """Queue the same parameters again; ``ask`` hands the queued trial out before sampling a new one."""
    attrs = retry_attrs(number, user_attrs, fault=fault, max_retries=max_retries)
    if attrs is None:
        return False
    study.enqueue_trial(dict(params), user_attrs=attrs, skip_if_exists=False)
    return True


def fail_stale(study: optuna.Study, storage: Any, stale_ids: list[int], *, grace_period: float,
               max_retries: int, skip: set[int]) -> list[int]:
    """Fail trials whose coordinator stopped beating and queue their retries; returns their numbers.

    Marking the trial FAIL is atomic in the database: when two coordinators
    find the same stale trial, only one succeeds and only that one queues the
    retry.
    """
    lost = []
    for trial_id in stale_ids:
        trial = storage.get_trial(trial_id)
        if trial.number in skip or trial.state != TrialState.RUNNING:
            continue
        try:
            storage.set_trial_user_attr(trial_id, REASON, f"coordinator lost (no heartbeat for {grace_period:g}s)")
            storage.set_trial_user_attr(trial_id, FAILURE, Failure.COORDINATOR_LOST.value)
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        enqueue_retry(study, trial.number, trial.params, trial.user_attrs, fault=False, max_retries=max_retries)
        lost.append(trial.number)
    return lost


def gpu_hours(trials: Iterable[FrozenTrial], gpus: float) -> float:
    """GPU time spent by the study: each started trial's wall time (so far, if running) times its GPU share.

    Read from the trials' own start and end times, so every coordinator of
    the study counts the same hours (Optuna stores them in local time).
    """
    now = datetime.datetime.now()
    seconds = sum(((t.datetime_complete or now) - t.datetime_start).total_seconds()
                  for t in trials if t.datetime_start is not None and t.state != TrialState.WAITING)
    return max(0.0, seconds) * gpus / 3600.0


class StallWatch:
    """When each running trial last said something, and how long is too long.

    Heartbeats prove the coordinator lives, not that a trial moves: a trial
    silent for longer than the limit is stalled. The limit is
    ``recovery.stall_timeout`` when set, else three times the median time
    between two reports seen so far plus two minutes, and half an hour
    before any such time was seen. A trial's first report gets five minutes
    more: before it, a fresh slot imports its framework and the first epoch
    traces the model.
    """

    FLOOR = 120.0
    UNSEEN = 1800.0
    FIRST_REPORT = 300.0

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.heard: dict[int, float] = {}           # running trial -> when it last reported (or started)
        self.silent: set[int] = set()               # running trials that have not reported yet
        self.gaps: deque[float] = deque(maxlen=500)  # the latest times between two reports of a trial

    def started(self, number: int, now: float) -> None:
        self.heard[number] = now
        self.silent.add(number)

    def reported(self, number: int, now: float) -> None:
        last = self.heard.get(number)
        if last is None:
            return
        if number in self.silent:
            self.silent.discard(number)
        else:
            self.gaps.append(now - last)
        self.heard[number] = now

    def forget(self, number: int) -> None:
        self.heard.pop(number, None)
        self.silent.discard(number)

    def limit(self) -> float:
        if self.timeout is not None:
            return self.timeout
        return 3 * statistics.median(self.gaps) + self.FLOOR if self.gaps else self.UNSEEN

    def stalled(self, now: float) -> list[int]:
        limit = self.limit()
        return [number for number, last in self.heard.items()
                if now - last > limit + (self.FIRST_REPORT if number in self.silent else 0.0)]


def trial_seconds(t: FrozenTrial) -> float:
    """A finished trial's wall time (0 without both timestamps)."""
    if t.datetime_start is None or t.datetime_complete is None:
        return 0.0
    return max(0.0, (t.datetime_complete - t.datetime_start).total_seconds())


class Counter:
    """The ``Tally`` of a study's configurations, its best complete trial and its trials' seconds, reading each
    finished trial once.

    Finished trials never change and Optuna lists trials by number, so the
    finished head of the list is counted once and kept; each update looks only
    at the trials after it (the running ones and any added since). The
    coordinator counts before every launch: a full pass over 5,000 trials per
    count was most of its per-trial cost growth (benchmark 2).
    """

    def __init__(self, maximize: bool) -> None:
        self.maximize = maximize
        self.settled = 0                       # trials[:settled] are finished and counted below
        self.counts = Tally()                  # over the settled trials; every FAIL in .failed
        self.fails: set[int] = set()           # numbers of settled FAIL trials
        self.replaced: set[int] = set()        # numbers some trial is a retry of
        self.best: FrozenTrial | None = None   # the best settled COMPLETE trial
        self.seconds = 0.0                     # settled trials' wall time
        self.completed: list[FrozenTrial] = []  # settled COMPLETE trials not yet taken by take_completed()
        self.settled_seconds: list[float] = []  # settled COMPLETE search trials' seconds
        self.durations: list[float] = []       # every COMPLETE search trial's seconds, at the last update (the
                                               # finalists' reserve: one completing before a lower-numbered
                                               # one still running counts at once)
        self.pruned: set[int] = set()          # numbers of settled PRUNED trials
        self.continued: set[int] = set()       # numbers of paused trials some trial continues

    def _better(self, a: FrozenTrial, b: FrozenTrial | None) -> bool:
        """``a`` meets its constraints and beats ``b`` on the metric (the first objective)."""
        value = first_value(a)
        return value is not None and feasible(a) and better(value, None if b is None else first_value(b),
                                                             self.maximize)

    def _settle(self, t: FrozenTrial) -> None:
        if FORKED_FROM in t.user_attrs:        # copied from another study: a candidate, not this budget's
            if self._better(t, self.best):
                self.best = t
        elif FINALIST_OF in t.user_attrs:      # a finalist's run: outside n_trials; its checkpoint is ranked
            if t.state == TrialState.COMPLETE and first_value(t) is not None:
                self.completed.append(t)
        elif t.state == TrialState.COMPLETE:
            self.counts.complete += 1
            if first_value(t) is not None:
                self.completed.append(t)
                self.settled_seconds.append(trial_seconds(t))
                if self._better(t, self.best):
                    self.best = t
        elif t.state == TrialState.PRUNED:
            self.counts.pruned += 1
            self.pruned.add(t.number)
        else:
            self.counts.failed += 1
            self.fails.add(t.number)
        self.seconds += trial_seconds(t)

    def update(self, trials: list[FrozenTrial]) -> tuple[Tally, FrozenTrial | None, float]:
        """The tally, the best complete trial and the GPU-unweighted seconds of ``trials`` (the whole study)."""
        while self.settled < len(trials) and trials[self.settled].state.is_finished():
            t = trials[self.settled]
            self._settle(t)
            self._link(t)
            self.settled += 1
        out = Tally(complete=self.counts.complete, pruned=self.counts.pruned)
        fails = len(self.fails)
        best, seconds = self.best, self.seconds
        tail_fails: list[int] = []
        tail_pruned: list[int] = []
        self.durations = list(self.settled_seconds)
        now = datetime.datetime.now()
        for t in trials[self.settled:]:
            self._link(t)
            if t.datetime_start is not None and t.state != TrialState.WAITING:
                seconds += max(0.0, ((t.datetime_complete or now) - t.datetime_start).total_seconds())
            if FINALIST_OF in t.user_attrs and t.state.is_finished():
                continue
            if t.state == TrialState.COMPLETE:
                out.complete += 1
                if self._better(t, best):
                    best = t
                if FORKED_FROM not in t.user_attrs and first_value(t) is not None:
                    self.durations.append(trial_seconds(t))
            elif t.state == TrialState.PRUNED:
                out.pruned += 1
                tail_pruned.append(t.number)
            elif t.state == TrialState.FAIL:
                fails += 1
                tail_fails.append(t.number)
            elif t.state == TrialState.RUNNING:
                out.running += 1
            elif t.state == TrialState.WAITING:
                out.waiting += 1
        out.retried = len(self.fails & self.replaced) + sum(n in self.replaced for n in tail_fails)
        out.failed = fails - out.retried
        out.continued = len(self.pruned & self.continued) + sum(n in self.continued for n in tail_pruned)
        out.pruned -= out.continued
        return out, best, seconds

    def _link(self, t: FrozenTrial) -> None:
        if RETRY_OF in t.user_attrs:
            self.replaced.add(t.user_attrs[RETRY_OF])
        if CONTINUES in t.user_attrs:
            self.continued.add(t.user_attrs[CONTINUES])

    def take_completed(self) -> list[FrozenTrial]:
        """Settled COMPLETE trials not handed out before (for the checkpoint clean-up)."""
        taken, self.completed = self.completed, []
        return taken
