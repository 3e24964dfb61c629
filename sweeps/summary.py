"""What a study holds, as plain dicts: for `status`, `best` and `ls`."""

from __future__ import annotations

from typing import Any

import optuna

from sweeps import study as schema
from sweeps.errors import SweepsError
from sweeps.recovery import gpu_hours
from sweeps.storage import open_storage

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")

def _trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    seconds = t.duration.total_seconds() if t.duration else None
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "epochs": t.user_attrs.get(schema.EPOCHS_RUN, len(t.intermediate_values)),
            "seconds": round(seconds, 1) if seconds is not None else None,
            "reason": t.user_attrs.get(schema.REASON, "")}


def status(name: str, storage_url: str | None) -> dict[str, Any]:
    study = schema.load(name, storage_url)
    trials = study.get_trials(deepcopy=False)
    every = schema.state_counts(trials)
    counts = {s: every[s] for s in STATES}
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    elapsed = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    config = study.user_attrs.get(schema.CONFIG_ATTR, {})
    best = schema.best_trial(study)
    return {
        "study": name, "direction": study.direction.name.lower(),
        "metric": config.get("metric", {}).get("name", "value"),
        "n_trials": config.get("budget", {}).get("n_trials"),
        "counts": counts,
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
        "elapsed_seconds": round(elapsed, 1),
        "gpu_hours": round(gpu_hours(trials, config.get("resources", {}).get("gpus", 0) or 0), 5),
        "gpu_hours_budget": config.get("budget", {}).get("gpu_hours"),
        "checkpoint_store": config.get("checkpoints", {}).get("store"),
        "store_errors": study.user_attrs.get(schema.STORE_ERRORS_ATTR, {"count": 0, "last": ""}),
        "trials": [_trial_row(t) for t in trials],
    }


def best(name: str, storage_url: str | None) -> dict[str, Any]:
    study = schema.load(name, storage_url)
    b = schema.best_trial(study)
    if b is None:
        raise SweepsError(f"study {name!r} has no completed trial yet; `sweeps status {name}` shows its trials")
    return {"study": name, "number": b.number, "value": b.value, "params": b.params,
            "fixed_params": b.user_attrs.get(schema.FIXED_PARAMS, {}), "seed": b.user_attrs.get(schema.SEED),
            "metrics": schema.metrics(b, schema.SCALAR_METRICS),
            "learning_curve": {int(k): v for k, v in sorted(b.intermediate_values.items())}}


def list_studies(storage_url: str | None) -> list[dict[str, Any]]:
    storage = open_storage(storage_url)
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        out.append({"study": s.study_name, "n_trials": s.n_trials, "direction": s.direction.name.lower(),
                    "best_value": s.best_trial.value if s.best_trial else None,
                    "started": s.datetime_start.isoformat(timespec="seconds") if s.datetime_start else None})
    return out
