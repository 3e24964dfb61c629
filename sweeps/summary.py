"""What a study holds, as plain dicts: for `status`, `best` and `ls`."""

from __future__ import annotations

import datetime
from typing import Any

import optuna

from sweeps import study as schema
from sweeps.errors import SweepsError
from sweeps.pruning import audit_summary
from sweeps.recovery import gpu_hours
from sweeps.rungs import RungPlan
from sweeps.storage import open_storage

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")

def _trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    seconds = t.duration.total_seconds() if t.duration else None
    return {"number": t.number, "state": t.state.name, "value": schema.first_value(t), "values": t.values,
            "params": t.params,
            "epochs": t.user_attrs.get(schema.EPOCHS_RUN, len(t.intermediate_values)),
            "seconds": round(seconds, 1) if seconds is not None else None,
            "reason": t.user_attrs.get(schema.REASON, "")}


def status(name: str, storage_url: str | None) -> dict[str, Any]:
    study = schema.load(name, storage_url)
    trials = study.get_trials(deepcopy=False)
    every = schema.state_counts(trials)
    counts = {s: every[s] for s in STATES}
    config = study.user_attrs.get(schema.CONFIG_ATTR, {})
    best = schema.best_trial(study)
    return {
        "study": name, "direction": study.directions[0].name.lower(),
        "metric": config.get("metric", {}).get("name", "value"),
        "objectives": _objectives(study),
        "constraints": config.get("constraints", {}),
        "forked_from": study.user_attrs.get(schema.FORK_ATTR),
        "n_trials": config.get("budget", {}).get("n_trials"),
        "counts": counts,
        "best": None if best is None else {"number": best.number, "value": schema.first_value(best),
                                           "params": best.params},
        "elapsed_seconds": round(wall_seconds(trials), 1),
        "gpu_hours": round(gpu_hours(trials, config.get("resources", {}).get("gpus", 0) or 0), 5),
        "gpu_hours_budget": config.get("budget", {}).get("gpu_hours"),
        "checkpoint_store": config.get("checkpoints", {}).get("store"),
        "store_errors": study.user_attrs.get(schema.STORE_ERRORS_ATTR, {"count": 0, "last": ""}),
        "search": search(study, trials),
        "trials": [_trial_row(t) for t in trials],
    }


def search(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
    """How the search decided: the rungs and what they rest on, pausing, the audit, the finalists."""
    maximize = schema.maximize(study)
    continued = {t.user_attrs[schema.CONTINUES] for t in trials if schema.CONTINUES in t.user_attrs}
    late = (study.user_attrs.get(schema.FINALISTS_ATTR) or {}).get("late", [])
    return {
        "rungs": study.user_attrs.get(schema.RUNGS_ATTR),
        "paused": sum(schema.PAUSED_AT in t.user_attrs for t in trials), "continued": len(continued),
        "audit": audit_summary(trials, maximize),
        "finalists": [{"config": row["config"], "trial": row["trial"].number, "mean": row["mean"], "std": row["std"],
                       "values": row["values"], "trials": row["trials"], "late": row["config"] in late}
                      for row in schema.standings(trials, maximize)],
    }


def search_lines(s: dict[str, Any]) -> list[str]:
    """The search's decisions in words, for `status`, `best` and `report`."""
    lines = []
    if s["rungs"]:
        lines.append("pruning: " + RungPlan.from_dict(s["rungs"]).describe())
    if s["paused"]:
        lines.append(f"paused at a rung: {s['paused']} trial(s), {s['continued']} of them continued since")
    audit = s["audit"]
    if audit:
        rate = "n/a" if audit["false_prune_rate"] is None else f"{audit['false_prune_rate']:.2f}"
        lines.append(f"prune audit: {audit['audited']} audited trial(s) finished ({audit['running']} running); "
                     f"{audit['in_top_quarter']} ended in the top quarter: false-prune rate {rate}")
    if s["finalists"]:
        lines.append("finalists, best mean first (mean ± sd over seeds): " + "; ".join(
            f"configuration {f['config']}: {f['mean']:.4f} ± {f['std']:.4f} (n={len(f['values'])}, handed over: "
            f"trial {f['trial']}{', joined late' if f.get('late') else ''})" for f in s["finalists"]))
    return lines


def wall_seconds(trials: list[optuna.trial.FrozenTrial]) -> float:
    """The study's wall time: from its first trial's start to now while one runs, else to the last end."""
    starts = [t.datetime_start for t in trials if t.datetime_start]
    if not starts:
        return 0.0
    if any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
        end = datetime.datetime.now()
    else:
        end = max((t.datetime_complete for t in trials if t.datetime_complete), default=min(starts))
    return max(0.0, (end - min(starts)).total_seconds())


def _objectives(study: optuna.Study) -> list[dict[str, str]]:
    return [{"name": n, "goal": d.name.lower()} for n, d in zip(schema.objective_names(study), study.directions)]


def _best_row(study: optuna.Study, b: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"study": study.study_name, "number": b.number, "value": schema.first_value(b),
            "values": dict(zip(schema.objective_names(study), b.values)), "params": b.params,
            "fixed_params": b.user_attrs.get(schema.FIXED_PARAMS, {}), "seed": b.user_attrs.get(schema.SEED),
            "constraints": dict(b.constraints), "metrics": schema.metrics(b, schema.SCALAR_METRICS),
            "learning_curve": {int(k): v for k, v in sorted(b.intermediate_values.items())}}


def best(name: str, storage_url: str | None) -> dict[str, Any]:
    """The trial handed over (the finalists' winner once they ran), and how the search chose it."""
    study = schema.load(name, storage_url)
    b = schema.best_trial(study)
    if b is None:
        raise SweepsError(f"study {name!r} has no completed trial that meets its constraints yet; "
                          f"`sweeps status {name}` shows its trials")
    trials = study.get_trials(deepcopy=False)
    runs, how = schema.ensemble_runs(study, trials), search(study, trials)
    return {**_best_row(study, b), "ensemble": runs, "search": how,
            "ensemble_provisional": bool(runs) and not how["finalists"]}   # no finalist stands yet


def pareto(name: str, storage_url: str | None) -> dict[str, Any]:
    """The Pareto front: complete trials meeting every constraint that no other such trial beats on all
    objectives; one row per model, the best metric first."""
    study = schema.load(name, storage_url)
    front = schema.pareto_front(study)
    if not front:
        raise SweepsError(f"study {name!r} has no completed trial that meets its constraints yet; "
                          f"`sweeps status {name}` shows its trials")
    return {"study": name, "objectives": _objectives(study), "front": [_best_row(study, t) for t in front]}


def list_studies(storage_url: str | None) -> list[dict[str, Any]]:
    storage = open_storage(storage_url)
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        out.append({"study": s.study_name, "n_trials": s.n_trials, "direction": s.directions[0].name.lower(),
                    "best_value": s.best_trial.values[0] if s.best_trial and s.best_trial.values else None,
                    "started": s.datetime_start.isoformat(timespec="seconds") if s.datetime_start else None})
    return out
