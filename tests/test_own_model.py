"""A user's own Keras model, end to end: its own parameters, two objectives and a size constraint, on real
Ray (the session's head), real PostgreSQL and real Keras; then the Pareto front and a front member exported
to int8 TFLite. The model lives in tests/usermodels.py, named by file path as a user's YAML would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweeps import study as schema
from sweeps.storage import driver_url
from tests.helpers import ROOT, cli_here, run_cli, write_space

pytestmark = pytest.mark.slow
TS = optuna.trial.TrialState


def test_own_model_with_two_objectives_and_a_constraint(tmp_path: Path, ray_head: str, pg_url: str,
                                                        capsys: Any) -> None:
    space = write_space(
        tmp_path, study="own-model", model=f"{ROOT / 'tests' / 'usermodels.py'}:build", epochs=2, parallel=2,
        sampler={"name": "grid"}, pruner={"name": "none"}, budget={"n_trials": 4},
        objectives=[{"name": "val_accuracy", "goal": "maximize"}, {"name": "latency_ms_per_image", "goal": "minimize"}],
        constraints={"param_count": {"max": 5000}},          # filters 64 makes about 17,000
        parameters={"filters": {"values": [4, 64]}, "dense": {"values": [8, 16]}, "learning_rate": 0.01,
                    "batch_size": 64})
    done = run_cli("run", str(space), "--storage", pg_url, "--ray-address", ray_head, cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "TensorBoard: tensorboard --logdir " in done.stderr
    assert "`sweeps best own-model --pareto` lists the Pareto front" in done.stdout

    study = optuna.load_study(study_name="own-model", storage=driver_url(pg_url))    # plain Optuna
    assert len(study.directions) == 2 and study.metric_names == ["val_accuracy", "latency_ms_per_image"]
    trials = study.get_trials()
    assert sorted((t.params["filters"], t.params["dense"]) for t in trials) == [(4, 8), (4, 16), (64, 8), (64, 16)]
    for t in trials:
        if t.params["filters"] == 64:       # rejected before its first epoch, with the reason and its size
            assert t.state == TS.PRUNED and not t.intermediate_values, t
            assert t.user_attrs[schema.REASON].startswith("rejected before training: param_count ")
            assert t.user_attrs[schema.EPOCHS_RUN] == 0 and t.user_attrs["param_count"] > 5000
            assert t.constraints["param_count"] > 0
        else:                               # trained with the user's parameters, both objectives told
            assert t.state == TS.COMPLETE and sorted(t.intermediate_values) == [1, 2]
            assert t.values[1] == t.user_attrs["latency_ms_per_image"] and t.user_attrs["param_count"] < 5000
            assert t.constraints["param_count"] <= 0

    code, out, _ = cli_here(capsys, "best", "own-model", "--storage", pg_url, "--pareto", "--json")
    front = json.loads(out)["front"]
    assert code == 0 and front and {row["number"] for row in front} <= {
        t.number for t in trials if t.state == TS.COMPLETE}
    assert list(front[0]["values"]) == ["val_accuracy", "latency_ms_per_image"]
    code, out, _ = cli_here(capsys, "best", "own-model", "--storage", pg_url, "--pareto")
    assert code == 0 and "Pareto front of val_accuracy (maximize), latency_ms_per_image (minimize)" in out

    member = front[-1]["number"]       # as a user runs it: a process of its own, and nothing but our lines
    done = run_cli("export", "own-model", "--storage", pg_url, "--trial", str(member), "--format", "tflite",
                   "--quantize", "int8", "--out", str(tmp_path / "out"), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    exported = json.loads(done.stdout)
    assert exported["trial"] == member and Path(exported["path"]).is_file()
    assert exported["path"].endswith(f"own-model-trial{member}-int8.tflite")
    assert abs(exported["accuracy_exported"] - exported["accuracy_original"]) <= 0.05, exported
    chatter = [line for line in done.stderr.splitlines() if not line.startswith(("loading the data", "exporting",
                                                                                  "attached"))]
    assert not chatter, chatter          # no TensorFlow / TFLite lines (oneDNN, absl, XNNPACK, converter)

    code, out, _ = cli_here(capsys, "best", "own-model", "--storage", pg_url, "--evaluate", "--json")
    test = json.loads(out)["test"]
    assert code == 0 and test["source"] == "checkpoint" and 0 < test["accuracy"] <= 1
    code, out, _ = cli_here(capsys, "rerun", "own-model", str(member), "--storage", pg_url, "--json")
    assert code == 0 and json.loads(out)["epochs"] == 2          # the user's model, trained again from its seed
    code, out, _ = cli_here(capsys, "report", "own-model", "--storage", pg_url, "--out", str(tmp_path / "report"),
                            "--json")
    assert code == 0 and Path(json.loads(out)["images"]["pareto_front"]).is_file()
