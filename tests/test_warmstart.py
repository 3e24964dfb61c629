"""Warm starts and TensorBoard logs, fast: the in-process dispatcher and the scripted trainer on SQLite.

seed_trials run first; `sweeps enqueue` queues configurations into a stopped
study that `sweeps resume` runs; `sweeps fork` copies the finished trials that
fit a narrower space, and the fork's TPE starts from them; every epoch of
every trial and its hyperparameters reach the study's TensorBoard folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from sweeps import study as schema
from sweeps import warmstart
from sweeps.config import ConfigError, from_dict
from sweeps.dispatch import InlineDispatcher
from sweeps.runner import resume_sweep, run_sweep
from tests.helpers import TINY_SPACE, cli_here
from tests.scripted import Scripted

TS = optuna.trial.TrialState


def _raw(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    return {**TINY_SPACE, "epochs": 3, "parallel": 1, "pruner": {"name": "none"},
            "parameters": {"learning_rate": {"values": [1e-6, 1e-4, 1e-2, 1e-1]},
                           "optimizer": {"values": ["adam", "sgd"]},
                           "momentum": {"low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}}},
            "checkpoints": {"store": str(tmp_path / "store")}, **changes}


def test_seed_trials_run_first_and_enqueued_ones_run_on_resume(tmp_path: Path, capsys: Any) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    seeded = {"learning_rate": 1e-1, "optimizer": "sgd", "momentum": 0.9}
    run_sweep(from_dict(_raw(tmp_path, budget={"n_trials": 3}, seed_trials=[seeded]), source="test"), url,
              dispatcher=InlineDispatcher(Scripted()))
    first = optuna.load_study(study_name="tiny", storage=url).trials[0]
    assert first.params == seeded and first.user_attrs[warmstart.SEEDED] == "seed_trials"

    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump([{"learning_rate": 1e-4, "optimizer": "adam"},
                                    {"learning_rate": 1e-6, "optimizer": "sgd", "momentum": 0.85}]))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([{"learning_rate": 1e-3}]))      # not among the choices
    with pytest.raises(ConfigError, match=r"bad.yaml: seed_trials\[0\].learning_rate: learning_rate must be one of"):
        warmstart.enqueue("tiny", url, str(bad))
    code, out, _ = cli_here(capsys, "enqueue", "tiny", str(more), "--storage", url)
    assert code == 0 and "queued 2 configuration(s) into tiny; its budget is now 5 trials" in out

    summary = resume_sweep("tiny", url, dispatcher=InlineDispatcher(Scripted()))
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert summary["complete"] == 5 and [t.state for t in trials] == [TS.COMPLETE] * 5
    assert trials[3].params == {"learning_rate": 1e-4, "optimizer": "adam"}
    assert trials[4].params == {"learning_rate": 1e-6, "optimizer": "sgd", "momentum": 0.85}
    assert {t.user_attrs.get(warmstart.SEEDED) for t in trials[3:]} == {"enqueue"}


def test_a_fork_copies_the_trials_that_fit_and_its_tpe_starts_from_them(tmp_path: Path, capsys: Any) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    both = [{"learning_rate": rate, "optimizer": "adam"} for rate in (1e-4, 1e-2, 1e-4, 1e-2)]
    run_sweep(from_dict(_raw(tmp_path, study="old", budget={"n_trials": 12}, sampler={"name": "random", "seed": 4},
                             seed_trials=both), source="test"), url, dispatcher=InlineDispatcher(Scripted()))
    old = optuna.load_study(study_name="old", storage=url).trials
    fits = [t for t in old if t.params["optimizer"] == "adam" and t.params["learning_rate"] in (1e-4, 1e-2)]
    assert len(fits) >= 4 and len(fits) < 12

    narrow = _raw(tmp_path, study="ignored", budget={"n_trials": 3},
                  sampler={"name": "tpe", "seed": 1, "n_startup_trials": 2},
                  parameters={"learning_rate": {"values": [1e-4, 1e-2]}, "optimizer": "adam"})
    space = tmp_path / "narrow.yaml"
    space.write_text(yaml.safe_dump(narrow))
    code, out, _ = cli_here(capsys, "fork", "old", "new", "--space", str(space), "--storage", url)
    assert code == 0 and f"study new: {len(fits)} of 12 finished trials of old fit its space" in out

    new = optuna.load_study(study_name="new", storage=url)
    copies = new.trials
    assert [c.user_attrs[warmstart.FORKED_FROM] for c in copies] == [{"study": "old", "trial": t.number} for t in fits]
    assert [c.values for c in copies] == [t.values for t in fits]
    assert [c.intermediate_values for c in copies] == [t.intermediate_values for t in fits]
    assert all(c.params == {"learning_rate": t.params["learning_rate"]} for c, t in zip(copies, fits))
    assert new.user_attrs[schema.FORK_ATTR] == {"study": "old", "trials": len(fits)}

    summary = resume_sweep("new", url, dispatcher=InlineDispatcher(Scripted()))
    ran = [t for t in optuna.load_study(study_name="new", storage=url).trials if warmstart.FORKED_FROM not in t.user_attrs]
    assert summary["complete"] == 3 and len(ran) == 3, "the copies are outside the budget"
    # TPE is past its two start-up trials from the first ask: every new trial takes the rate the copies favour
    assert [t.params["learning_rate"] for t in ran] == [1e-2] * 3


def test_tensorboard_logs_hold_every_epoch_and_the_hyperparameters_without_importing_tensorflow(
        tmp_path: Path) -> None:
    # tensorboard's own EventFileWriter imports TensorFlow for its file access: about 6 s of the coordinator's
    # start-up on 2 cores, counted in the sweep's timeout. A fresh process, as a user's sweep starts.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    url = f"sqlite:///{tmp_path}/s.db"
    raw = _raw(tmp_path, budget={"n_trials": 3}, pruner={"name": "median", "n_startup_trials": 1})
    script = ("import sys; from sweeps.config import from_dict; from sweeps.dispatch import InlineDispatcher; "
              "from sweeps.runner import run_sweep; from tests.scripted import Scripted; "
              f"run_sweep(from_dict({raw!r}, source='test'), {url!r}, "
              "dispatcher=InlineDispatcher(Scripted())); print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False", "the coordinator imported TensorFlow"
    study = optuna.load_study(study_name="tiny", storage=url)
    logdir = tmp_path / "store" / "tensorboard" / schema.checkpoint_key(study)
    root = EventAccumulator(str(logdir))
    root.Reload()
    experiment = plugin_data_pb2.HParamsPluginData.FromString(root.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert {h.name for h in experiment.experiment.hparam_infos} == {"learning_rate", "optimizer", "momentum"}
    assert len(study.trials) == 3
    for t in study.trials:
        run = EventAccumulator(str(logdir / f"trial-{t.number:04d}"))
        run.Reload()
        curve = {e.step: e.value for e in run.Scalars("val_accuracy")}
        assert curve == pytest.approx({int(k): v for k, v in t.intermediate_values.items()}), t.number
        start = plugin_data_pb2.HParamsPluginData.FromString(
            run.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
        assert start.hparams["learning_rate"].number_value == pytest.approx(t.params["learning_rate"])
        assert start.hparams["optimizer"].string_value == t.params["optimizer"]
