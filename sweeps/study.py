"""The study's schema: the one module that knows how a sweep is stored in an Optuna study.

It owns creating and loading a study (with the sampler and pruner rebuilt
from the stored config, since Optuna stores neither), every study and trial
attribute key, the trial seed, "best trial or none", the full parameter set
(searched plus fixed), the metric keys and the direction. The coordinator
writes through these names; the read side (status, best, report, export,
dashboard, the Python API) reads through them and never imports the
coordinator.
"""

from __future__ import annotations

import os
import uuid
import warnings
from typing import Any

import optuna

from sweeps import __version__, algorithms
from sweeps.config import SweepConfig, from_dict
from sweeps.errors import SweepsError
from sweeps.storage import mask, open_storage, resolve_url

# -- study attributes ----------------------------------------------------------------------------
CONFIG_ATTR = "sweeps:config"     # the resolved config (SweepConfig.to_dict): all `resume` needs
DATASET_ATTR = "sweeps:dataset"   # the dataset reference, shape and class names
VERSION_ATTR = "sweeps:version"
UID_ATTR = "sweeps:uid"           # names the study's checkpoint folder, unique across databases
STORE_ERRORS_ATTR = "sweeps:store_errors"   # checkpoint writes that failed: {count, last}
FORK_ATTR = "sweeps:forked_from"  # `sweeps fork`: {study, trials copied}

# -- trial attributes ----------------------------------------------------------------------------
SEED = "seed"                     # the seed the trial trained with (a retry keeps its configuration's)
FIXED_PARAMS = "fixed_params"     # parameters the space fixes (Optuna stores only searched ones)
COORDINATOR = "coordinator"       # host:pid of the coordinator that ran the trial
REASON = "reason"                 # why a trial was pruned or failed, in words
FAILURE = "failure"               # the kind of a failure (workers.spec.Failure), for code to read
EPOCHS_RUN = "epochs_run"
RETRY_OF = "retry_of"             # the trial this one repeats after a failure
CONFIG_ID = "config_id"           # the first trial of the configuration
ATTEMPT = "attempt"
FAULTS = "faults"                 # worker faults so far for this configuration (coordinator loss is not one)
START_EPOCH = "start_epoch"       # the checkpoint epoch a retry resumed from
CHECKPOINT_NOTE = "checkpoint_note"   # why a retry started earlier than its last checkpoint (a damaged slot)
FORKED_FROM = "forked_from"       # a trial copied from another study by `sweeps fork`: {study, trial}; no budget

# Metrics each complete trial stores (workers/metrics.py and the trainer): the scalars first.
SCALAR_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "param_count", "model_bytes",
                  "latency_ms_per_image", "seconds_per_epoch")
METRIC_KEYS = SCALAR_METRICS + ("per_class_recall", "confusion_matrix", "train_seconds")

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def create(config: SweepConfig, storage_url: str | None, dataset: dict[str, Any]) -> optuna.Study:
    """A new study holding everything a resume needs; a taken name is one clear line."""
    storage = open_storage(storage_url, create=True)
    try:
        study = optuna.create_study(storage=storage, study_name=config.study,
                                    directions=[optuna.study.StudyDirection.MAXIMIZE if goal == "maximize"
                                                else optuna.study.StudyDirection.MINIMIZE for _, goal in config.all_objectives],
                                    sampler=algorithms.sampler(config), pruner=algorithms.pruner(config))
    except optuna.exceptions.DuplicatedStudyError:
        raise SweepsError(
            f"study {config.study!r} already exists in {mask(resolve_url(storage_url))}; "
            f"continue it with `sweeps resume {config.study}` or choose another name with --study"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([name for name, _ in config.all_objectives])   # dashboard axes: val_accuracy, ...
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    study.set_user_attr(DATASET_ATTR, dataset)
    study.set_user_attr(VERSION_ATTR, __version__)
    study.set_user_attr(UID_ATTR, uuid.uuid4().hex[:12])
    return study


def load_config(study: optuna.Study) -> SweepConfig:
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise SweepsError(f"study {study.study_name!r} was not created by sweeps (it has no stored config); "
                          "only sweeps studies can be resumed")
    return from_dict(raw, source=f"study {study.study_name}")


def load(name: str, storage_url: str | None, config: SweepConfig | None = None) -> optuna.Study:
    """Load a study with the sampler and pruner rebuilt from its stored config."""
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise SweepsError(f"no study named {name!r} in {mask(resolve_url(storage_url))}; "
                          "`sweeps ls` lists the studies there") from None
    config = config or load_config(study)
    salt = len(study.get_trials(deepcopy=False)) * 65_537 + os.getpid()   # see algorithms.sampler
    return optuna.load_study(study_name=name, storage=storage,
                             sampler=algorithms.sampler(config, salt), pruner=algorithms.pruner(config))


def checkpoint_key(study: optuna.Study) -> str | None:
    """The study's folder in the checkpoint store (None for a study from before checkpoints)."""
    uid = study.user_attrs.get(UID_ATTR)
    return f"{study.study_name}-{uid}" if uid else None


def maximize(study: optuna.Study) -> bool:
    """The first objective's goal (the metric every epoch reports)."""
    return study.directions[0] == optuna.study.StudyDirection.MAXIMIZE


def objective_names(study: optuna.Study) -> list[str]:
    """The objectives' names, the metric first (Optuna's metric names; "value" before they were set)."""
    return list(study.metric_names or [f"objective {i}" for i in range(len(study.directions))])


def first_value(trial: optuna.trial.FrozenTrial) -> float | None:
    """The metric's value (the first objective's), for one objective or several."""
    return trial.values[0] if trial.values else None


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """No constraint of the trial is broken (a trial without constraint values is feasible)."""
    return all(v <= 0 for v in trial.constraints.values())


def trial_seed(study_seed: int, config_id: int) -> int:
    """Each configuration's seed: derived from the study seed and its first trial's number."""
    return (study_seed * 100_003 + config_id) % (2 ** 31 - 1)


def config_id(number: int, user_attrs: dict[str, Any]) -> int:
    """The configuration a trial runs: its own number, or its first attempt's when it is a retry."""
    return int(user_attrs.get(CONFIG_ID, number))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial that meets every constraint with the best metric (the first objective), or None.

    One objective: Optuna's own (one query, feasibility included). Several:
    no trial beats it on the first objective; ``pareto_front`` lists the others.
    """
    if len(study.directions) == 1:
        try:
            return study.best_trial
        except ValueError:
            return None
    trials = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
              if t.values and feasible(t)]
    if not trials:
        return None
    sign = 1 if maximize(study) else -1
    return max(trials, key=lambda t: (sign * t.values[0], -t.number))


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete trials no other feasible trial dominates, best metric first (Optuna's ``best_trials``)."""
    sign = -1 if maximize(study) else 1
    return sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))


def full_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Searched and fixed parameters: everything needed to train the trial again (defaults aside)."""
    return {**trial.params, **trial.user_attrs.get(FIXED_PARAMS, {})}


def state_counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Trials by Optuna state, every state named (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    return {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}


def metrics(trial: optuna.trial.FrozenTrial, keys: tuple[str, ...] = METRIC_KEYS) -> dict[str, Any]:
    return {k: trial.user_attrs[k] for k in keys if k in trial.user_attrs}
