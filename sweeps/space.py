"""Search space -> ``trial.suggest_*``, with conditional parameters.

A parameter with ``when`` exists only while its parents hold one of the named
values; it is neither suggested nor stored otherwise, so Optuna (and the
dashboard) see it only under its parent.
"""

from __future__ import annotations

from typing import Any

import optuna

from sweeps.parameters import Param


def ordered(params: dict[str, Param]) -> list[Param]:
    """Parents before children (config validation already rejected cycles)."""
    out: list[Param] = []
    seen: set[str] = set()

    def visit(p: Param) -> None:
        if p.name in seen:
            return
        seen.add(p.name)
        for parent in p.when:
            visit(params[parent])
        out.append(p)

    for p in params.values():
        visit(p)
    return out


def active(p: Param, chosen: dict[str, Any]) -> bool:
    return all(parent in chosen and chosen[parent] in allowed for parent, allowed in p.when.items())


def suggest(trial: optuna.Trial, params: dict[str, Param]) -> dict[str, Any]:
    """Ask the trial for every active parameter; returns the active values only."""
    chosen: dict[str, Any] = {}
    for p in ordered(params):
        if not active(p, chosen):
            continue
        if p.fixed:
            chosen[p.name] = p.value
        elif p.values is not None:
            chosen[p.name] = trial.suggest_categorical(p.name, p.values)
        elif p.low is None or p.high is None:
            raise ValueError(f"parameter {p.name} is neither fixed, a choice nor a range")
        elif p.is_int:
            chosen[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            chosen[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
    return chosen


def grid(params: dict[str, Param]) -> dict[str, list[Any]]:
    """The grid sampler's search space (every searched parameter is discrete)."""
    out: dict[str, list[Any]] = {}
    for p in params.values():
        if p.fixed:
            continue
        if p.values is not None:
            out[p.name] = list(p.values)
        elif p.low is not None and p.high is not None and p.step is not None:   # validated: a stepped range
            n = int(round((p.high - p.low) / p.step)) + 1
            out[p.name] = [type(p.low)(p.low + i * p.step) for i in range(n)]
    return out


def grid_size(params: dict[str, Param]) -> int:
    size = 1
    for values in grid(params).values():
        size *= len(values)
    return size


def distribution(p: Param) -> optuna.distributions.BaseDistribution:
    """The distribution ``suggest`` gives a searched parameter (for trials copied in by a fork)."""
    if p.values is not None:
        return optuna.distributions.CategoricalDistribution(p.values)
    assert p.low is not None and p.high is not None
    if p.is_int:
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return optuna.distributions.FloatDistribution(float(p.low), float(p.high), step=p.step, log=p.log)
