"""End-to-end sweeps: the real CLI, real PostgreSQL / SQLite, a real local Ray, real Keras training."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import psutil
import pytest
import sqlalchemy

from sweeps.storage import driver_url
from sweeps.trained import evaluate, load_trained
from tests.helpers import SWEEP_PARAMETERS, cli_here, free_port, run_cli, start_cli, wait_for, write_space

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def _check_every_epoch_stored(trials: list[optuna.trial.FrozenTrial]) -> None:
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL:
            continue
        steps = sorted(t.intermediate_values)
        assert steps == list(range(1, t.user_attrs["epochs_run"] + 1)), (t.number, steps)


def test_postgresql_sweep_two_in_parallel_workers_never_connect(own_pg_url: str, ray_head: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    pg_url = own_pg_url           # a database of its own: the only clients it sees are this sweep's
    space = write_space(tmp_path, study="pg-sweep", budget={"n_trials": 4}, parallel=2)
    db = pg_url.rsplit("/", 1)[1]
    server_port = sqlalchemy.engine.make_url(pg_url).port or 5432
    monitor = sqlalchemy.create_engine(driver_url(pg_url), isolation_level="AUTOCOMMIT")
    proc = start_cli("run", str(space), "--storage", pg_url, "--ray-address", ray_head, cwd=tmp_path)
    client_pids: set[int] = set()
    names: set[str] = set()
    most_connections = most_running = 0
    try:
        with monitor.connect() as conn:
            me = conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
            while proc.poll() is None:
                rows = conn.execute(sqlalchemy.text(
                    "SELECT client_port, application_name FROM pg_stat_activity WHERE datname = :db AND pid <> :me"),
                    {"db": db, "me": me}).all()
                ports = {r.client_port for r in rows}
                names |= {r.application_name for r in rows}
                most_connections = max(most_connections, len(rows))
                for c in psutil.net_connections(kind="tcp"):   # the client end of each PostgreSQL connection
                    if c.pid and c.laddr and c.raddr and c.raddr.port == server_port and c.laddr.port in ports:
                        client_pids.add(c.pid)
                try:
                    running = conn.execute(sqlalchemy.text(
                        "SELECT count(*) FROM trials WHERE state = 'RUNNING'")).scalar()
                    most_running = max(most_running, running)
                except sqlalchemy.exc.ProgrammingError:
                    pass                                        # tables not created yet
                time.sleep(0.1)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        monitor.dispose()
    assert proc.returncode == 0, err
    assert "study pg-sweep: " in out and "of 4" in out
    # Principle 1: the only client of the database is the coordinator process itself.
    assert client_pids == {proc.pid}, (client_pids, proc.pid)
    assert names == {"sweeps-coordinator"}
    assert most_running == 2, "two trials should have run at once"
    assert 1 <= most_connections <= 4

    study = optuna.load_study(study_name="pg-sweep", storage=driver_url(pg_url))
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state in FINISHED for t in trials)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= 1
    _check_every_epoch_stored(trials)
    assert study.user_attrs["sweeps:config"]["budget"]["n_trials"] == 4

    listed = subprocess.run([str(BIN / "optuna"), "trials", "--study-name", "pg-sweep", "--storage",
                             driver_url(pg_url), "-f", "json"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 4

    status = json.loads(cli_here(capsys, "status", "pg-sweep", "--storage", pg_url, "--json")[1])
    assert status["counts"]["COMPLETE"] + status["counts"]["PRUNED"] + status["counts"]["FAIL"] == 4
    best = json.loads(cli_here(capsys, "best", "pg-sweep", "--storage", pg_url, "--json")[1])
    assert best["value"] == pytest.approx(study.best_value) and best["params"] == study.best_params
    listing = json.loads(cli_here(capsys, "ls", "--storage", pg_url, "--json")[1])
    listed_studies = {r["study"]: r for r in listing}          # the session's database is shared with other tests
    assert listed_studies["pg-sweep"]["n_trials"] == 4
    assert listed_studies["pg-sweep"]["best_value"] == pytest.approx(study.best_value)
    code, _, err = cli_here(capsys, "run", str(space), "--storage", pg_url)
    assert code == 2 and "already exists" in err and "sweeps resume pg-sweep" in err

    port = free_port()
    dashboard = subprocess.Popen([str(BIN / "optuna-dashboard"), "--host", "127.0.0.1", "--port", str(port),
                                  driver_url(pg_url)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        served = wait_for(lambda: _get_json(f"http://127.0.0.1:{port}/api/studies"), "optuna-dashboard to answer",
                          timeout=60, proc=dashboard)
        studies = {s["study_name"]: s for s in served["study_summaries"]}
        assert "pg-sweep" in studies
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{studies['pg-sweep']['study_id']}")
        assert len(detail["trials"]) == 4
        assert all(len(t["intermediate_values"]) >= 1 for t in detail["trials"] if t["state"] != "Fail")
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_cross_validated_folder_sweep_reads_images_by_path_decoded_once(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An image folder (sent by path, decoded once) under 2-fold cross-validation, in one sweep."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, level in (("light", 220), ("dark", 30)):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(40):
            pixels = np.clip(rng.normal(level, 20, (12, 12)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(tmp_path / "images" / cls / f"{i}.png")
    url = f"sqlite:///{tmp_path}/sweeps.db"          # the default storage: sweeps.db in the current folder
    write_space(tmp_path, dataset={"name": "folder", "path": "images", "image_size": [12, 12], "folds": 2},
                epochs=2, budget={"n_trials": 2}, parallel=1, pruner={"name": "none"})
    done = run_cli("run", "space.yaml", "--quiet", cwd=tmp_path, timeout=600, XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]        # 2 folds x 2 epochs
        folds = t.user_attrs["fold_values"]
        assert len(folds) == 2 and t.value == pytest.approx(sum(folds) / 2, abs=1e-5)
        assert t.intermediate_values[4] == pytest.approx(t.value, abs=1e-5)
        assert sum(map(sum, t.user_attrs["confusion_matrix"])) == 72      # out-of-fold: all 72 non-test images
    sources = [t.user_attrs["data_source"] for t in trials]
    assert "decoded" not in sources and "memory" in sources, sources     # the coordinator's decode was cached
    assert len(list((tmp_path / "cache" / "sweeps" / "folders").glob("*.npz"))) == 1
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))     # `best --evaluate`, in this process
    assert evaluate(load_trained("tiny", url))["n_test"] == 8


NO_TENSORFLOW = """
import importlib.abc, os, sys


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    \"\"\"A machine without TensorFlow: every import of it fails.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, _NoTensorFlow())
open(os.path.join(os.environ["SWEEPS_TEST_NO_TF_LOG"], str(os.getpid())), "a").close()   # this process has it
"""


def test_jax_backend_sweep_runs_where_tensorflow_cannot_be_imported(tmp_path: Path) -> None:
    """`backend: jax` with TensorFlow unimportable in every process (a sitecustomize on PYTHONPATH, which
    the local Ray's workers inherit): in-memory data, batches from a PyDataset, mixup in NumPy."""
    (tmp_path / "no_tf").mkdir()
    (tmp_path / "no_tf" / "sitecustomize.py").write_text(NO_TENSORFLOW)
    (tmp_path / "marks").mkdir()
    url = f"sqlite:///{tmp_path}/sweeps.db"
    space = write_space(tmp_path, study="jax", backend="jax", budget={"n_trials": 1}, parallel=1, epochs=2,
                        pruner={"name": "none"}, parameters={**SWEEP_PARAMETERS, "mixup_alpha": 0.2,
                                                             "learning_rate": 5e-3})
    done = run_cli("run", str(space), "--storage", url, "--quiet", "--json", cwd=tmp_path, timeout=600,
                   PYTHONPATH=str(tmp_path / "no_tf"), SWEEPS_TEST_NO_TF_LOG=str(tmp_path / "marks"))
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="jax", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE]
    assert {t.user_attrs["backend"] for t in trials} == {"jax"}
    assert all(t.value > 0.3 and sorted(t.intermediate_values) == [1, 2] for t in trials)   # digits: chance 0.1
    blocked = {int(p.name) for p in (tmp_path / "marks").iterdir()}
    assert {t.user_attrs["worker_pid"] for t in trials} <= blocked, "the workers did not run without TensorFlow"
