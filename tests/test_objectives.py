"""Several objectives and constraints, fast: the in-process dispatcher and the scripted trainer on SQLite.

The study is an Optuna multi-objective study that plain Optuna reads; the
pruner still acts on the first objective; a trial that breaks a constraint
stays out of the best trial and the Pareto front. The same on real Ray and
real Keras, with a user's own model, is in ``test_own_model.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from sweeps import study as schema
from sweeps.config import from_dict
from sweeps.dispatch import InlineDispatcher
from sweeps.runner import run_sweep
from sweeps.summary import best, pareto
from tests.helpers import TINY_SPACE
from tests.scripted import Scripted

TS = optuna.trial.TrialState


def _measures(params: dict) -> dict[str, float]:
    """Wider models read slower and weigh more; the learning rate sets accuracy (tests/scripted.py)."""
    return {"latency_ms_per_image": params["width"] / 10, "param_count": params["width"] * 1000}


def test_two_objectives_a_constraint_and_pruning_on_the_first(tmp_path: Path) -> None:
    raw = {**TINY_SPACE, "epochs": 4, "budget": {"n_trials": 14}, "parallel": 1,
           "sampler": {"name": "tpe", "seed": 3, "n_startup_trials": 4}, "pruner": {"name": "median", "n_startup_trials": 2},
           "objectives": ["val_accuracy", {"name": "latency_ms_per_image", "goal": "minimize"}],
           "constraints": {"param_count": {"max": 20000}},
           "parameters": {"learning_rate": {"values": [1e-6, 1e-2]}, "width": {"values": [8, 16, 32]}},
           "checkpoints": {"store": str(tmp_path / "store")}}
    url = f"sqlite:///{tmp_path}/s.db"
    run_sweep(from_dict(raw, source="test"), url, dispatcher=InlineDispatcher(Scripted(measures=_measures)))

    study = optuna.load_study(study_name="tiny", storage=url)       # plain Optuna reads it
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_accuracy", "latency_ms_per_image"]
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TS.COMPLETE]
    for t in complete:
        assert t.values[1] == t.params["width"] / 10
        assert math.isclose(t.values[0], max(t.intermediate_values.values()))
        assert (t.constraints["param_count"] > 0) == (t.params["width"] == 32)
    pruned = [t for t in trials if t.state == TS.PRUNED]
    assert pruned and all(t.params["learning_rate"] == 1e-6 for t in pruned), "pruned on val_accuracy"
    assert any(t.params["width"] == 32 for t in complete), "the seed should reach the constrained width"

    feasible = [t for t in complete if t.params["width"] != 32]
    top = max(feasible, key=lambda t: (t.values[0], -t.number))
    assert best("tiny", url)["number"] == top.number            # the best meets the constraint
    front = pareto("tiny", url)["front"]
    numbers = {row["number"] for row in front}
    assert numbers and numbers <= {t.number for t in feasible}
    for row in front:                      # nothing feasible beats a front member on both objectives
        a = row["values"]
        assert not any(t.values[0] >= a["val_accuracy"] and t.values[1] <= a["latency_ms_per_image"]
                       and (t.values[0], t.values[1]) != (a["val_accuracy"], a["latency_ms_per_image"])
                       for t in feasible)
    assert [row["number"] for row in front][0] == top.number     # best metric first
    assert schema.best_trial(study).number == top.number


def test_status_wall_time_runs_from_the_first_start_to_now_while_a_trial_runs() -> None:
    from datetime import datetime, timedelta

    from sweeps.summary import wall_seconds

    now = datetime.now()

    def trial(state: optuna.trial.TrialState, start: float, end: float | None) -> optuna.trial.FrozenTrial:
        return optuna.trial.FrozenTrial(
            number=0, state=state, value=None, datetime_start=now - timedelta(seconds=start),
            datetime_complete=None if end is None else now - timedelta(seconds=end), params={}, distributions={},
            user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=0)

    done = [trial(TS.COMPLETE, 100, 60), trial(TS.COMPLETE, 50, 30)]
    assert wall_seconds(done) == pytest.approx(70, abs=0.5)               # first start to last end
    assert wall_seconds([*done, trial(TS.RUNNING, 10, None)]) == pytest.approx(100, abs=2)   # to now
    assert wall_seconds([]) == 0.0
