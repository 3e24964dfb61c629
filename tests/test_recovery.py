"""Faults with real processes and real signals: a killed coordinator, a killed Ray worker,
a restarted PostgreSQL, two coordinators on one study, a diverging trial."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import optuna
import pytest

from sweeps.storage import driver_url
from tests.conftest import run_cli, start_cli, write_space
from tests.pgcluster import PgCluster
from tests.processes import kill_tree, trainer_processes

pytestmark = pytest.mark.slow
TS = optuna.trial.TrialState
FAST_RECOVERY = {"heartbeat_interval": 1, "grace_period": 4}
NO_PRUNING = {"name": "none"}


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=driver_url(url))


def _wait_for(check: Callable[[], bool], proc: subprocess.Popen[str], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _running_with_epochs(url: str, name: str, epochs: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            trials = _study(url, name).get_trials(deepcopy=False)
        except Exception:        # not created yet
            return False
        return any(t.state == TS.RUNNING and len(t.intermediate_values) >= epochs for t in trials)
    return check


def _configs(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Finished configurations: a failure with a retry does not count, its retry does."""
    replaced = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in trials:
        if not (t.state == TS.FAIL and t.number in replaced):
            out[t.state.name] += 1
    return out


def _check_no_unrecorded_duplicates(trials: list[optuna.trial.FrozenTrial]) -> None:
    """The same parameters twice only as retries of one configuration (a resumed sampler must not repeat itself)."""
    seen: dict[str, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        key = repr(sorted(t.params.items()))
        config = t.user_attrs.get("config_id", t.number)
        assert seen.setdefault(key, config) == config, f"trial {t.number} repeats configuration {seen[key]}"


def _check_curves_continuous(trials: list[optuna.trial.FrozenTrial]) -> None:
    for t in trials:
        if t.state in (TS.COMPLETE, TS.PRUNED):
            assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs_run"] + 1)), t.number


def test_killed_coordinator_is_resumed_from_another_directory(pg_url: str, ray_head: str, tmp_path: Path) -> None:
    space = write_space(tmp_path, study="crash", budget={"n_trials": 4}, parallel=2, epochs=6,
                        pruner=NO_PRUNING, recovery=FAST_RECOVERY)
    proc = start_cli("run", str(space), "--storage", pg_url, "--ray-address", ray_head, cwd=tmp_path)
    try:
        _wait_for(_running_with_epochs(pg_url, "crash", 2), proc, "a trial reached epoch 2")
    finally:
        kill_tree(proc)
    lost = [t.number for t in _study(pg_url, "crash").get_trials() if t.state == TS.RUNNING]
    assert lost, "kill -9 should leave trials RUNNING"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli("resume", "crash", "--storage", pg_url, "--ray-address", ray_head, cwd=elsewhere, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lost their coordinator" in result.stderr

    trials = _study(pg_url, "crash").get_trials()
    counts = _configs(trials)
    assert counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"] == 4 and counts["FAIL"] == 0, counts
    assert not [t for t in trials if t.state in (TS.RUNNING, TS.WAITING)]
    by_number = {t.number: t for t in trials}
    for number in lost:
        assert by_number[number].state == TS.FAIL
        assert by_number[number].user_attrs["reason"].startswith("coordinator lost")
    retries = [t for t in trials if t.user_attrs.get("retry_of") in lost]
    assert len(retries) == len(lost)
    for retry in retries:
        original = by_number[retry.user_attrs["retry_of"]]
        assert retry.params == original.params
        assert retry.user_attrs["seed"] == original.user_attrs["seed"]
    assert max(r.user_attrs.get("start_epoch", 0) for r in retries) >= 2, "a retry should resume from its checkpoint"
    _check_curves_continuous(trials)
    _check_no_unrecorded_duplicates(trials)


def test_killed_worker_process_is_retried_and_the_sweep_completes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sweeps.db"
    space = write_space(tmp_path, study="worker-kill", budget={"n_trials": 3}, parallel=1, epochs=6,
                        pruner=NO_PRUNING, recovery=FAST_RECOVERY, checkpoints={"keep_best": 1})
    proc = start_cli("run", str(space), "--storage", url, cwd=tmp_path)
    try:
        _wait_for(_running_with_epochs(url, "worker-kill", 2), proc, "a trial reached epoch 2")
        victims = trainer_processes(proc)
        assert len(victims) == 1, [v.cmdline() for v in victims]
        victims[0].kill()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert proc.returncode == 0, err[-3000:]
    trials = _study(url, "worker-kill").get_trials()
    failed = [t for t in trials if t.state == TS.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["reason"].startswith("worker lost"), failed
    retry = [t for t in trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].state in (TS.COMPLETE, TS.PRUNED)
    assert retry[0].user_attrs["faults"] == 1 and retry[0].user_attrs["start_epoch"] >= 2
    assert _configs(trials)["COMPLETE"] == 3
    _check_curves_continuous(trials)
    # keep_best: 1 -> only the best trial's configuration keeps its checkpoint (next to the SQLite file).
    best = _study(url, "worker-kill").best_trial
    [folder] = [p for p in (tmp_path / "sweeps_artifacts").iterdir() if p.is_dir()]   # beside it: dashboard PNGs
    kept = {p.name.split(".")[0] for p in folder.iterdir()}
    assert kept == {f"config-{best.user_attrs.get('config_id', best.number)}"}, kept


def test_second_ctrl_c_records_interrupted_and_resume_continues_from_checkpoints(ray_head: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sweeps.db"
    space = write_space(tmp_path, study="stopped", budget={"n_trials": 2}, parallel=1, epochs=6, pruner=NO_PRUNING)
    proc = start_cli("run", str(space), "--storage", url, "--ray-address", ray_head, cwd=tmp_path)
    try:
        _wait_for(_running_with_epochs(url, "stopped", 2), proc, "a trial reached epoch 2")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert proc.returncode == 130, err[-3000:]
    trials = _study(url, "stopped").get_trials()
    [stopped] = [t for t in trials if t.state == TS.FAIL]
    assert stopped.user_attrs["reason"].startswith("interrupted")
    assert [t.state for t in trials if t.user_attrs.get("retry_of") == stopped.number] == [TS.WAITING]

    result = run_cli("resume", "stopped", "--storage", url, "--ray-address", ray_head, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = _study(url, "stopped").get_trials()
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == stopped.number]
    assert retry.state == TS.COMPLETE and retry.user_attrs["start_epoch"] >= 2
    assert retry.user_attrs["faults"] == 0                 # Ctrl-C is not the configuration's fault
    assert _configs(trials)["COMPLETE"] == 2
    _check_curves_continuous(trials)


def test_postgresql_restart_mid_sweep_loses_nothing(ray_head: str, tmp_path: Path) -> None:
    cluster = PgCluster()
    try:
        cluster.start()
        space = write_space(tmp_path, study="outage", budget={"n_trials": 3}, parallel=1, epochs=6,
                            pruner=NO_PRUNING, recovery={"heartbeat_interval": 1, "grace_period": 30})
        proc = start_cli("run", str(space), "--storage", cluster.url, "--ray-address", ray_head, cwd=tmp_path)
        try:
            _wait_for(_running_with_epochs(cluster.url, "outage", 1), proc, "a trial reported an epoch")
            cluster.stop()
            time.sleep(4)
            cluster.start()
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
        assert proc.returncode == 0, err[-3000:]
        assert "database unreachable" in err, "the outage should have been noticed and waited out"
        trials = _study(cluster.url, "outage").get_trials()
        assert len(trials) == 3 and all(t.state == TS.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
        for t in trials:
            assert sorted(t.intermediate_values) == list(range(1, 7)), (t.number, t.intermediate_values)
    finally:
        cluster.destroy()


def test_database_gone_too_long_exits_clearly_and_resume_continues(ray_head: str, tmp_path: Path) -> None:
    cluster = PgCluster()
    try:
        cluster.start()
        space = write_space(tmp_path, study="gone", budget={"n_trials": 2}, parallel=1, epochs=4, pruner=NO_PRUNING,
                            recovery={"heartbeat_interval": 1, "grace_period": 4, "database_timeout": 3})
        proc = start_cli("run", str(space), "--storage", cluster.url, "--ray-address", ray_head, cwd=tmp_path)
        try:
            _wait_for(_running_with_epochs(cluster.url, "gone", 1), proc, "a trial reported an epoch")
            cluster.stop()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
        assert proc.returncode == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert "database has been unreachable" in last and "sweeps resume" in last and "Traceback" not in err
        cluster.start()
        result = run_cli("resume", "gone", "--storage", cluster.url, "--ray-address", ray_head, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        trials = _study(cluster.url, "gone").get_trials()
        counts = _configs(trials)
        assert counts["COMPLETE"] == 2 and counts["RUNNING"] == counts["WAITING"] == 0, counts
    finally:
        cluster.destroy()


def test_two_coordinators_share_one_budget(pg_url: str, ray_head: str, tmp_path: Path) -> None:
    space = write_space(tmp_path, study="shared", budget={"n_trials": 6}, parallel=1, epochs=3, pruner=NO_PRUNING)
    first = start_cli("run", str(space), "--storage", pg_url, "--ray-address", ray_head, cwd=tmp_path)
    second = None
    try:
        _wait_for(_running_with_epochs(pg_url, "shared", 0), first, "the study to exist")
        second = start_cli("resume", "shared", "--storage", pg_url, "--ray-address", ray_head, cwd=tmp_path)
        out1, err1 = first.communicate(timeout=400)
        out2, err2 = second.communicate(timeout=400)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                kill_tree(p)
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode == 0, err2[-3000:]
    trials = _study(pg_url, "shared").get_trials()
    assert len(trials) == 6 and all(t.state == TS.COMPLETE for t in trials), [t.state for t in trials]
    _check_no_unrecorded_duplicates(trials)
    coordinators = {t.user_attrs["coordinator"] for t in trials}
    assert len(coordinators) == 2, "both coordinators should have run trials"


def test_diverging_trial_is_not_retried_and_the_sweep_goes_on(ray_head: str, tmp_path: Path) -> None:
    space = write_space(tmp_path, study="diverge", budget={"n_trials": 2}, parallel=1, epochs=2,
                        sampler={"name": "grid"}, pruner=NO_PRUNING,
                        parameters={"learning_rate": {"values": [1.0e9, 1.0e-2]}, "optimizer": "sgd",
                                    "momentum": 0.9, "width": 8, "batch_size": 64})
    result = run_cli("run", str(space), "--ray-address", ray_head, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = _study(f"sqlite:///{tmp_path}/sweeps.db", "diverge").get_trials()
    assert len(trials) == 2
    by_lr = {t.params["learning_rate"]: t for t in trials}
    assert by_lr[1.0e9].state == TS.PRUNED and by_lr[1.0e9].user_attrs["reason"].startswith("diverged")
    assert by_lr[1.0e-2].state == TS.COMPLETE
    assert not [t for t in trials if "retry_of" in t.user_attrs]


def test_resume_where_the_dataset_is_missing_is_one_clear_line(ray_head: str, tmp_path: Path) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = tmp_path / "data" / "digits.npz"
    data.parent.mkdir()
    np.savez(data, x_train=digits.images.astype("float32") / 16.0, y_train=digits.target)
    url = f"sqlite:///{tmp_path}/sweeps.db"
    space = write_space(tmp_path, study="moved", budget={"n_trials": 1}, parallel=1, epochs=1,
                        dataset={"name": "npz", "path": "data/digits.npz"})
    assert run_cli("run", str(space), "--storage", url, "--ray-address", ray_head, cwd=tmp_path).returncode == 0
    data.rename(tmp_path / "elsewhere.npz")                 # "another machine" without the file
    before = [(t.number, t.state) for t in _study(url, "moved").get_trials()]
    result = run_cli("resume", "moved", "--storage", url, "--n-trials", "2", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "not reachable from this machine" in line and str(data) in line and "Traceback" not in result.stderr
    study = _study(url, "moved")
    assert [(t.number, t.state) for t in study.get_trials()] == before
    assert study.user_attrs["sweeps:config"]["budget"]["n_trials"] == 1     # the failed resume changed nothing
