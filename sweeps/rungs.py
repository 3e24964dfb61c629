"""Where pruning decides and who goes on: successive-halving rungs, fixed by hand or placed by the data.

Asynchronous successive halving (Li et al., "A System for Massively Parallel
Hyperparameter Tuning", 2020) ranks each trial at a rung epoch against every
configuration that reached that epoch and lets the top 1/eta go on. As
published it is promotion-based: a trial below the top is paused, not
killed, and continues once later arrivals have made it one of the top 1/eta
(``promotable``). Pausing needs the trial's checkpoint; the coordinator
pauses only when it keeps checkpoints.

Rungs are either fixed (``asha``: ``min_resource`` times powers of
``reduction_factor``) or placed by the data (``auto``): the first trials
run to the end, and the first rung is the earliest epoch from which on
every epoch's values rank the finished trials as their final values do
(Spearman's rho, at least the threshold at 80 % confidence: among 5 trials
one swapped pair reads 0.9), recomputed as trials finish; no auto rung sits
where a pause would save less than 1/eta of a trial. An epoch where a trial predicted
one class for every validation image is left out of that correlation, and
no trial is paused on one (the coordinator says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.attrs import CONFIG_ID, CONTINUES, FINALIST_OF, FORKED_FROM, ONE_CLASS, PAUSED_AT, config_id


@dataclass(frozen=True)
class RungPlan:
    """The rung epochs and what they rest on (for `status` and `report`)."""

    mode: str                                   # "fixed" or "auto"
    rungs: tuple[int, ...]
    correlation: dict[int, float] = field(default_factory=dict)   # auto: epoch -> rho against the final value
    trials: int = 0                             # auto: finished trials the correlation was measured on
    threshold: float | None = None
    late: tuple[int, int] | None = None         # auto: (the epoch that ranks them, the latest rung) when past it

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "rungs": list(self.rungs), "trials": self.trials, "threshold": self.threshold,
                "correlation": {str(k): round(v, 3) for k, v in sorted(self.correlation.items())},
                "late": list(self.late) if self.late else None}

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> RungPlan:
        late = raw.get("late")
        return RungPlan(raw["mode"], tuple(raw["rungs"]), {int(k): v for k, v in raw.get("correlation", {}).items()},
                        raw.get("trials", 0), raw.get("threshold"), (late[0], late[1]) if late else None)

    def describe(self) -> str:
        """One line: the rungs, and for auto rungs the correlation they rest on."""
        if self.mode == "fixed":
            return f"rungs at epochs {', '.join(map(str, self.rungs))} (fixed)" if self.rungs else "no rungs"
        if self.late:
            return (f"no rungs: the epochs rank the {self.trials} finished trials as their final values do only "
                    f"from epoch {self.late[0]} on, and a pause after epoch {self.late[1]} would save less than "
                    "1/reduction_factor of a trial; nothing is pruned")
        if not self.rungs:
            best = max(self.correlation.items(), key=lambda kv: kv[1], default=None)
            seen = f"; highest rho {best[1]:.2f} at epoch {best[0]}" if best else ""
            return (f"no rungs yet: no epoch from which on every epoch's values rank the {self.trials} finished "
                    f"trials as their final values do (rho at least {self.threshold} at 80 % confidence){seen}; "
                    "nothing is pruned")
        first = self.rungs[0]
        rho = self.correlation[first]
        return (f"rungs at epochs {', '.join(map(str, self.rungs))} (auto: epoch {first}'s values rank the "
                f"{self.trials} finished trials as their final values with rho {rho:.2f}, at least "
                f"{lower_bound(rho, self.trials):.2f} at 80 % confidence >= {self.threshold})")


def fixed_rungs(min_resource: int, eta: int, steps: int, min_early_stopping_rate: int = 0) -> tuple[int, ...]:
    """``min_resource`` * eta^(s + k) below the last epoch: the epochs ASHA decides at."""
    rungs, epoch = [], max(1, min_resource) * eta ** min_early_stopping_rate
    while epoch < steps:
        rungs.append(epoch)
        epoch *= eta
    return tuple(rungs)


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 when either side is constant."""
    rx, ry = _ranks(xs), _ranks(ys)
    n = len(xs)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx > 0 and vy > 0 else 0.0


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def latest_rung(steps: int, eta: int) -> int:
    """The last epoch where a pause still saves 1/eta of a trial's epochs. Later, a rung buys almost nothing
    and keeps good trials from completing (measured on the harder 28x28 set: rungs at epoch 17-19 of 20
    paused 6 of 8 TPE proposals to save three quarters of one trial)."""
    return steps - math.ceil(steps / eta)


def place_rungs(curves: list[tuple[dict[int, float], float]], steps: int, eta: int, threshold: float,
                min_trials: int) -> RungPlan:
    """Auto rungs from finished curves (per-epoch values, final value): the first at the earliest epoch from
    which on every epoch's rho with the final value surely reaches ``threshold``, the next ones eta times
    later each, none after ``latest_rung``."""
    if len(curves) < min_trials:
        return RungPlan("auto", (), {}, len(curves), threshold)
    correlation: dict[int, float] = {}
    for epoch in range(1, steps):
        pairs = [(values[epoch], final) for values, final in curves if epoch in values]
        if len(pairs) >= max(3, min_trials):
            correlation[epoch] = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    counts = {e: sum(e in values for values, _ in curves) for e in correlation}
    sure = {e: lower_bound(correlation[e], counts[e]) >= threshold for e in correlation}
    # the earliest epoch from which on every epoch qualifies: one epoch's high rho between low ones is the
    # luck of testing 19 epochs on a few curves (seen on MNIST-5k: rho 0.93 at epoch 6, 0.26 and 0.38 beside it)
    first = next((e for e in sorted(correlation) if all(sure[later] for later in correlation if later >= e)), None)
    latest = latest_rung(steps, eta)
    rungs = tuple(r for r in fixed_rungs(first, eta, steps) if r <= latest) if first is not None else ()
    late = (first, latest) if first is not None and not rungs else None
    return RungPlan("auto", rungs, correlation, len(curves), threshold, late)


def lower_bound(rho: float, n: int, z: float = 0.84) -> float:
    """Rho's one-sided 80 % lower confidence bound (Fisher's z, standard error 1.03 / sqrt(n - 3) for Spearman):
    among 5 trials one swapped pair already reads 0.9, so an epoch qualifies on what its rho surely is."""
    if n <= 3:
        return -1.0
    rho = max(-0.999999, min(0.999999, rho))
    return math.tanh(math.atanh(rho) - z * 1.03 / math.sqrt(n - 3))


def curves(trials: list[FrozenTrial], steps: int) -> list[tuple[dict[int, float], float]]:
    """Complete trials that ran to the last epoch: their values per epoch (one-class epochs left out), final value."""
    out = []
    for t in trials:
        if t.state != TrialState.COMPLETE or not t.values or steps not in t.intermediate_values:
            continue
        if FORKED_FROM in t.user_attrs or FINALIST_OF in t.user_attrs:
            continue
        skip = set(t.user_attrs.get(ONE_CLASS, []))
        out.append(({e: v for e, v in t.intermediate_values.items() if e not in skip}, t.values[0]))
    return out


def rung_values(trials: list[FrozenTrial], epoch: int) -> dict[int, float]:
    """Each configuration's value at ``epoch`` (a paused trial and its continuation are one configuration)."""
    out: dict[int, float] = {}
    for t in trials:
        if epoch in t.intermediate_values and FINALIST_OF not in t.user_attrs and FORKED_FROM not in t.user_attrs:
            out.setdefault(config_id(t.number, t.user_attrs), t.intermediate_values[epoch])
    return out


def in_top(value: float, peers: list[float], eta: int, maximize: bool) -> bool:
    """Among the best max(1, n // eta) of the rung's values (n counts this one): Optuna's successive-halving rule."""
    keep = max(1, len(peers) // eta)
    ranked = sorted(peers, reverse=maximize)
    cut = ranked[keep - 1]
    return value >= cut if maximize else value <= cut


def promotable(trials: list[FrozenTrial], eta: int, maximize: bool) -> list[FrozenTrial]:
    """Paused trials that now rank in the top 1/eta of their rung, not continued yet: highest rung first, then
    best value (ASHA promotes from the top rung down)."""
    continued = {t.user_attrs[CONTINUES] for t in trials if CONTINUES in t.user_attrs}
    paused = [t for t in trials if t.state == TrialState.PRUNED and PAUSED_AT in t.user_attrs
              and t.number not in continued]
    out = []
    for t in paused:
        epoch = int(t.user_attrs[PAUSED_AT])
        peers = rung_values(trials, epoch)
        if epoch in t.intermediate_values and in_top(t.intermediate_values[epoch], list(peers.values()), eta, maximize):
            out.append(t)
    sign = -1 if maximize else 1
    return sorted(out, key=lambda t: (-int(t.user_attrs[PAUSED_AT]), sign * t.intermediate_values[
        int(t.user_attrs[PAUSED_AT])], t.number))


def continuation_attrs(paused: FrozenTrial) -> dict[str, Any]:
    """The user attrs of the trial that continues a paused one: same configuration, hence same seed and slots."""
    return {CONTINUES: paused.number, CONFIG_ID: config_id(paused.number, paused.user_attrs)}


class RungPruner(optuna.pruners.BasePruner):
    """ASHA's decision at fixed or automatic rungs; the coordinator turns a "no" into a pause or a stop."""

    def __init__(self, steps: int, eta: int = 3, *, rungs: tuple[int, ...] | None = None, threshold: float = 0.8,
                 min_trials: int = 5) -> None:
        self.steps, self.eta, self.fixed = steps, eta, rungs
        self.threshold, self.min_trials = threshold, min_trials
        self._cached: tuple[int, RungPlan] | None = None

    def plan(self, study: optuna.Study, trials: list[FrozenTrial] | None = None) -> RungPlan:
        """The rungs now; auto rungs are recomputed when another trial has completed."""
        if self.fixed is not None:
            return RungPlan("fixed", self.fixed)
        if trials is None:
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        found = curves(trials, self.steps)
        if self._cached is None or self._cached[0] != len(found):
            self._cached = (len(found), place_rungs(found, self.steps, self.eta, self.threshold, self.min_trials))
        return self._cached[1]

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or FINALIST_OF in trial.user_attrs:
            return False
        trials = study.get_trials(deepcopy=False)
        if step not in self.plan(study, trials).rungs:
            return False
        peers = rung_values(trials, step)
        peers[config_id(trial.number, trial.user_attrs)] = trial.intermediate_values[step]
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        return not in_top(trial.intermediate_values[step], list(peers.values()), self.eta, maximize)
