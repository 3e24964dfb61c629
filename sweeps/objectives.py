"""What a sweep optimises: one metric or several objectives, and the constraints a model must meet.

The first objective is the metric trials report after every epoch (what the
pruner acts on); further ones are measured once per trial at its best epoch
(latency, size, macro F1). Several objectives make an Optuna multi-objective
study; constraints go through Optuna's constraint values (``<= 0`` is
feasible), which its samplers, ``best_trials`` and optuna-dashboard read.
Constraints on a model's size are also sent to the workers, which reject a
model that breaks one before its first epoch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

import optuna

from workers.spec import MEASURES, METRICS, Bound

if TYPE_CHECKING:
    from sweeps.validation import Checks

def objectives_section(c: Checks, raw: Any, metric_given: bool, metric: str) -> list[tuple[str, str]]:
    """``objectives:`` -> [(name, goal), ...]; the first is a per-epoch metric, the rest measures."""
    if not isinstance(raw, list) or not raw:
        c.fail("objectives", "must be a list such as [{name: val_accuracy, goal: maximize}, "
                             "{name: latency_ms_per_image, goal: minimize}]")
    out: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        key = f"objectives[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            c.fail(key, "must be a name or {name: ..., goal: maximize | minimize}")
        c.unknown_keys(key, item, {"name", "goal"})
        name = item.get("name")
        known = METRICS if i == 0 else MEASURES
        if name not in known:
            what = ("the first objective is the metric reported every epoch (pruning acts on it)" if i == 0
                    else "later objectives are measured once per trial")
            c.fail(f"{key}.name", f"unknown objective {name!r}: {what}; choose one of {', '.join(known)}")
        if any(name == n for n, _ in out):
            c.fail(f"{key}.name", f"{name} is named twice; list each objective once")
        goal = item.get("goal", known[name])
        c.one_of(f"{key}.goal", goal, ("maximize", "minimize"), f"must be maximize or minimize, got {goal!r}")
        out.append((str(name), str(goal)))
    if metric_given and out[0][0] != metric:
        c.fail("objectives", f"the first objective ({out[0][0]}) must be the metric ({metric}); drop metric: "
                             "or list it first")
    return out


def constraints_section(c: Checks, raw: Any) -> tuple[Bound, ...]:
    """``constraints: {param_count: {max: 2.0e+6}, ...}`` -> bounds on measures."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        c.fail("constraints", "must map a measure to its bounds, e.g. {param_count: {max: 2.0e+6}}")
    out = []
    for name, bounds in raw.items():
        key = f"constraints.{name}"
        if name not in MEASURES:
            c.fail(key, f"unknown measure; constrain one of {', '.join(MEASURES)}")
        if not isinstance(bounds, dict) or not bounds:
            c.fail(key, "must be {max: N}, {min: N} or both")
        c.unknown_keys(key, bounds, {"min", "max"})
        for side, value in bounds.items():
            if isinstance(value, str):
                c.fail(f"{key}.{side}", f"must be a number, got {value!r} (YAML reads 2e6 as text: write 2.0e+6)")
            c.number(f"{key}.{side}", value)
        low, high = bounds.get("min"), bounds.get("max")
        if low is not None and high is not None and low > high:
            c.fail(key, f"min ({low}) > max ({high}); no model could meet it")
        out.append(Bound(str(name), None if low is None else float(low), None if high is None else float(high)))
    return tuple(out)


def check_algorithms(c: Checks, objectives: list[tuple[str, str]], sampler: str, pruner: str) -> None:
    """Samplers and pruners that cannot serve a multi-objective study, said before anything runs."""
    if len(objectives) < 2:
        return
    if sampler == "cmaes":
        c.fail("sampler.name", "cmaes optimises one objective; with several objectives use tpe, gp or random")
    if pruner == "hyperband":
        c.fail("pruner.name", "hyperband works on single-objective studies; with several objectives use asha, "
                              "successive_halving or median (they prune on the first objective)")


def bound_dict(b: Bound) -> dict[str, float]:
    return {k: v for k, v in (("min", b.low), ("max", b.high)) if v is not None}


def values(names: list[str], value: float | None, found: dict[str, Any]) -> list[float | None]:
    """The values to tell, in objective order: the metric's, then each measure's (None where one is missing)."""
    return [value, *(found.get(name) for name in names[1:])]


def unmeasured(names: list[str], told: list[float | None]) -> str | None:
    """Why these values cannot be told (None when they can): the metric, or another objective, is missing."""
    for name, v in zip(names, told):
        if v is None or not math.isfinite(float(v)):
            return "no finite metric was measured" if name == names[0] else f"objective {name} was not measured (got {v})"
    return None


def set_constraints(trial: optuna.Trial, bounds: tuple[Bound, ...], found: dict[str, Any]) -> list[str]:
    """Each measured constraint on the trial (Optuna's sampler and ``best_trials`` read them); returns the
    broken ones in words."""
    broken = []
    for b in bounds:
        if b.measure in found and found[b.measure] is not None:
            v = b.violation(float(found[b.measure]))
            trial.set_constraint(b.measure, v)
            if v > 0:
                broken.append(b.measure)
    return broken


class FirstObjective:
    """A study as a pruner sees it: the direction of the first objective (Optuna's pruners read
    ``study.direction``, which a multi-objective study refuses)."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    @property
    def direction(self) -> optuna.study.StudyDirection:
        return self._study.directions[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def first_objective(study: optuna.Study) -> optuna.Study:
    """``study`` as Optuna's pruners (and TPE's ranking of pruned trials) can read it: see ``FirstObjective``."""
    return cast(optuna.Study, FirstObjective(study))
