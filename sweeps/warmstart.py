"""Warm starts: configurations to try first (``seed_trials:``, ``sweeps enqueue``), and forks of a study
into a new space whose sampler starts from the old study's finished trials.

Queued configurations are Optuna's ``enqueue_trial``: ``ask`` hands them out
before sampling. A fork copies each finished trial of the old study whose
configuration lies inside the new space (values, learning curve, metrics,
seed) with the new space's distributions, so TPE models them from its first
ask; the copies are marked ``forked_from`` and do not count towards the new
study's budget.
"""

from __future__ import annotations

from typing import Any

import optuna
import yaml

from sweeps import space
from sweeps import study as schema
from sweeps.config import SweepConfig
from sweeps.errors import SweepsError
from sweeps.parameters import Parameters, fits
from sweeps.validation import ConfigError, Sections
from workers.hyperparameters import DEFAULTS

SEEDED = "seeded"                   # trial attribute: a queued configuration's origin (seed_trials, enqueue)
FORKED_FROM = schema.FORKED_FROM    # trial attribute: {"study": OLD, "trial": N}
FORK_ATTR = schema.FORK_ATTR       # study attribute: {"study": OLD, "trials": copied}
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def seed(study: optuna.Study, config: SweepConfig) -> None:
    """The YAML's ``seed_trials``, queued when the study is created (a resume does not queue them again)."""
    for params in config.seed_trials:
        study.enqueue_trial(dict(params), user_attrs={SEEDED: "seed_trials"}, skip_if_exists=False)


def enqueue(name: str, storage_url: str | None, path: str) -> dict[str, Any]:
    """Queue the configurations of a YAML file (a list, or ``seed_trials: [...]``) into a stored study and
    raise its budget by their number, so that ``sweeps resume`` runs them."""
    study = schema.load(name, storage_url)
    config = schema.load_config(study)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None
    if isinstance(raw, dict) and set(raw) == {"seed_trials"}:
        raw = raw["seed_trials"]
    found = Parameters(Sections(path)).configurations("seed_trials", raw, config.parameters)
    for params in found:
        study.enqueue_trial(params, user_attrs={SEEDED: "enqueue"}, skip_if_exists=False)
    raised = config.replace(n_trials=config.n_trials + len(found))
    study.set_user_attr(schema.CONFIG_ATTR, raised.to_dict())
    return {"study": name, "queued": len(found), "n_trials": raised.n_trials}


def fit(config: SweepConfig, trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    """The trial's searched values in the new space, or None when its configuration lies outside it (a value
    out of range, a fixed value that differs, or a parameter the new space leaves at another default)."""
    own = schema.full_params(trial)
    full = {**DEFAULTS, **own}
    chosen: dict[str, Any] = {}
    for p in space.ordered(config.parameters):
        if not space.active(p, chosen):
            continue
        if p.name not in full or fits(p, full[p.name]) is not None:
            return None
        chosen[p.name] = full[p.name]
    for name, value in own.items():     # what the new space would not set
        if name not in config.parameters and (name not in DEFAULTS or DEFAULTS[name] != value):
            return None
    return {k: v for k, v in chosen.items() if not config.parameters[k].fixed}


def copy_trials(old: optuna.Study, new: optuna.Study, config: SweepConfig) -> tuple[int, int]:
    """Add the old study's finished trials that fit the new space to ``new``; returns (copied, finished)."""
    distributions = {name: space.distribution(p) for name, p in config.parameters.items() if not p.fixed}
    fixed = {name: p.value for name, p in config.parameters.items() if p.fixed}
    copied = 0
    finished = old.get_trials(deepcopy=False, states=FINISHED)
    for t in finished:
        params = fit(config, t)
        if params is None:
            continue
        attrs = {k: v for k, v in t.user_attrs.items() if k in (*schema.METRIC_KEYS, schema.SEED, schema.EPOCHS_RUN,
                                                                   schema.REASON)}
        attrs[FORKED_FROM] = {"study": old.study_name, "trial": t.number}
        if fixed:
            attrs[schema.FIXED_PARAMS] = fixed
        limits = {f"constraints:{b.measure}": b.violation(float(t.user_attrs[b.measure]))
                  for b in config.constraints if t.user_attrs.get(b.measure) is not None}
        new.add_trial(optuna.trial.create_trial(
            state=t.state, values=t.values, params=params, user_attrs=attrs, system_attrs=limits,
            distributions={k: distributions[k] for k in params}, intermediate_values=dict(t.intermediate_values)))
        copied += 1
    return copied, len(finished)


def check_fork(old: optuna.Study, old_config: SweepConfig, config: SweepConfig) -> None:
    """A fork only makes sense on the same objectives (the values are copied as they are)."""
    if old_config.all_objectives != config.all_objectives:
        raise SweepsError(f"study {old.study_name!r} optimises {old_config.all_objectives}, the new space "
                          f"{config.all_objectives}; a fork copies values as they are, so the objectives must match")
    if old_config.dataset.name != config.dataset.name:
        raise SweepsError(f"study {old.study_name!r} ran on dataset {old_config.dataset.name}, the new space on "
                          f"{config.dataset.name}; its values say nothing about this one")
