"""The study's schema: the one module that knows how a sweep is stored in an Optuna study.

It owns creating and loading a study (with the sampler and pruner rebuilt
from the stored config, since Optuna stores neither), every study and trial
attribute key (defined in ``attrs.py``, read through here), the trial seed, "best trial or none", the full parameter set
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
from sweeps.attrs import (  # noqa: F401  (their home is attrs.py; the read side takes them from here)
    ATTEMPT,
    AUDITED,
    CHECKPOINT_NOTE,
    CONFIG_ATTR,
    CONFIG_ID,
    CONTINUES,
    COORDINATOR,
    DATASET_ATTR,
    EPOCHS_RUN,
    FAILURE,
    FAULTS,
    FINALIST_OF,
    FINALISTS_ATTR,
    FIXED_PARAMS,
    FORK_ATTR,
    FORKED_FROM,
    ONE_CLASS,
    PAUSED_AT,
    REASON,
    RETRY_OF,
    RUNGS_ATTR,
    SEED,
    START_EPOCH,
    STORE_ERRORS_ATTR,
    TEST_ATTR,
    UID_ATTR,
    VERSION_ATTR,
    config_id,
)
from sweeps.config import SweepConfig, from_dict
from sweeps.errors import SweepsError
from sweeps.storage import mask, open_storage, resolve_url

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


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The trial handed over: the finalists' winner once they ran, else the complete trial that meets every
    constraint with the best metric (the first objective), or None.

    One objective: Optuna's own (one query, feasibility included). Several:
    no trial beats it on the first objective; ``pareto_front`` lists the others.
    """
    if FINALISTS_ATTR in study.user_attrs:
        table = standings(study.get_trials(deepcopy=False), maximize(study))
        if table:
            return table[0]["trial"]
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


def ensemble_runs(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None) -> list[int]:
    """The runs averaged into the handed-over model (when more than one): under ``finalists.ensemble: winner``
    (or true) the winning configuration's complete runs, under ``finalists`` every standing finalist's, the
    winner's first; empty: the best trial alone is handed over.

    Under ``finalists``, until a finalist run has finished (a sweep looked at while it searches, or stopped
    before its finalists ran), the best ``count x (seeds + 1)`` complete trials stand in for them: the same
    size and latency the user chose, and an average of good runs tests better than the best of them alone,
    whose validation value is partly its luck (benchmarks/RESULTS.md)."""
    finalists = _finalists_config(study)
    mode = finalists.get("ensemble")
    if mode not in (True, "winner", "finalists"):
        return []
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    table = standings(trials, maximize(study))
    if not table and mode == "finalists":
        return provisional_runs(trials, maximize(study), int(finalists.get("count", 0)) *
                                (int(finalists.get("seeds", 0)) + 1))
    runs = [n for row in (table if mode == "finalists" else table[:1]) for n in row["trials"]]
    return runs if len(runs) > 1 else []


def _finalists_config(study: optuna.Study) -> dict[str, Any]:
    finalists = (study.user_attrs.get(CONFIG_ATTR) or {}).get("finalists")
    return finalists if isinstance(finalists, dict) else {}


def ensembled(study: optuna.Study, config: SweepConfig) -> frozenset[int]:
    """Under ``finalists.ensemble``: the configurations whose checkpoints the hand-over needs, which may be more
    than ``keep_best`` or rank below other trials: the ensemble's runs, the best trial, and the finalists chosen
    (their search runs join it once their runs are in). Empty without an ensemble (no database read)."""
    if not config.finalist_ensemble:
        return frozenset()
    trials = study.get_trials(deepcopy=False)
    numbers = ensemble_runs(study, trials) + [b.number for b in [best_trial(study)] if b is not None]
    numbers += (study.user_attrs.get(FINALISTS_ATTR) or {}).get("configs", [])
    return frozenset(config_id(n, trials[n].user_attrs) for n in numbers)


def provisional_runs(trials: list[optuna.trial.FrozenTrial], maximize: bool, size: int) -> list[int]:
    """The best ``size`` complete trials that meet every constraint, best first (ties to the earlier trial);
    empty when fewer than two completed."""
    sign = 1 if maximize else -1
    complete = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.values and feasible(t)
                       and FINALIST_OF not in t.user_attrs), key=lambda t: (-sign * t.values[0], t.number))
    runs = [t.number for t in complete[:size]]
    return runs if len(runs) > 1 else []


def tested_model(test: dict[str, Any]) -> str:
    """The model `best --evaluate` tested (TEST_ATTR), in words."""
    members = test.get("members") or []
    return (f"the average of trials {', '.join(map(str, members))}" if members else f"trial {test.get('trial')}'s model")


def standings(trials: list[optuna.trial.FrozenTrial], maximize: bool) -> list[dict[str, Any]]:
    """The finalists, best mean first: each configuration's values over its seeds, their mean and spread, and
    the trial handed over (its run with the best value). Only configurations with a finished finalist run stand:
    one whose runs were cut (a timeout) would compete with its search run alone, a value chosen for being high,
    against the others' means. Equal means (values over 1,001 images tie often) go to the smaller spread."""
    groups: dict[int, list[optuna.trial.FrozenTrial]] = {
        int(t.user_attrs[FINALIST_OF]): [] for t in trials
        if FINALIST_OF in t.user_attrs and t.state == optuna.trial.TrialState.COMPLETE}
    for t in trials:
        origin = int(t.user_attrs.get(FINALIST_OF, config_id(t.number, t.user_attrs)))
        if origin in groups and t.state == optuna.trial.TrialState.COMPLETE and t.values and feasible(t):
            groups[origin].append(t)
    sign = 1 if maximize else -1
    table = []
    for origin, runs in groups.items():
        if not runs:
            continue
        values = [t.values[0] for t in runs]
        mean = sum(values) / len(values)
        spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        chosen = max(runs, key=lambda t: (sign * t.values[0], -t.number))
        table.append({"config": origin, "trial": chosen, "values": values, "mean": mean, "std": spread,
                      "trials": [t.number for t in runs]})
    return sorted(table, key=lambda row: (-sign * round(row["mean"], 9), row["std"], row["config"]))


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
