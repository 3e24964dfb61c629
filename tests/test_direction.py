"""The metric's goal is one fact: Optuna's direction, the trainer's best epoch and `sweeps best` agree.

Real Keras on a few hundred digits, trials on the in-process dispatcher; the goal is decided once, in
the config, and travels in the trial spec (the trainer never guesses it from the metric's name).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from sweeps.config import from_dict
from sweeps.dispatch import InlineDispatcher
from sweeps.runner import run_sweep
from tests.helpers import TINY_SPACE, cli_here

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("metric", [{"name": "val_accuracy", "goal": "minimize"}, {"name": "val_loss"}])
def test_direction_best_epoch_and_sweeps_best_agree(metric: dict[str, str], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    from workers.trainer import train_trial

    url = f"sqlite:///{tmp_path}/s.db"
    parameters = {"learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}, "width": 8, "batch_size": 64}
    config = from_dict({**TINY_SPACE, "parameters": parameters, "metric": metric,
                        "dataset": {"name": "digits", "max_images": 400}, "epochs": 3, "budget": {"n_trials": 2},
                        "parallel": 1, "pruner": {"name": "none"}}, source="test")
    assert not config.maximize
    run_sweep(config, url, dispatcher=InlineDispatcher(train_trial))
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:          # the trainer kept the epoch with the lowest value, as the goal says
        curve = t.intermediate_values
        assert len(curve) == 3 and len(set(curve.values())) > 1, curve
        assert t.value == pytest.approx(min(curve.values()))
    lowest = min(trials, key=lambda t: t.value)
    code, out, _ = cli_here(capsys, "best", "tiny", "--storage", url, "--json")
    best = json.loads(out)
    assert code == 0 and best["number"] == lowest.number == study.best_trial.number
    assert best["value"] == pytest.approx(lowest.value)
