"""Faults with real processes and real signals: a killed coordinator, a killed Ray worker, Ctrl-C twice on the
CLI, a restarted or vanished PostgreSQL, a dataset missing where a study is resumed.

The coordinator's own rules for these (retry from a checkpoint, Ctrl-C, budgets, two coordinators, a
diverging trial) are tested fast, in-process, in ``test_coordinator.py``; here the faults are real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from sweeps.config import SweepConfig, from_dict
from sweeps.dispatch import InlineDispatcher
from sweeps.runner import resume_sweep, run_sweep
from sweeps.storage import DatabaseUnavailable, StoppedDuringOutage
from tests.helpers import plain_study, run_cli, start_cli, wait_for, write_space
from tests.netns import Netns
from tests.pgcluster import PgCluster
from tests.processes import kill_tree, trainer_processes
from tests.scripted import Scripted

pytestmark = pytest.mark.slow
TS = optuna.trial.TrialState
FAST_RECOVERY = {"heartbeat_interval": 1, "grace_period": 4}
NO_PRUNING = {"name": "none"}


def _study(url: str, name: str) -> optuna.Study:
    return plain_study(name, url)


def _running_with_epochs(url: str, name: str, epochs: int) -> Callable[[], bool]:
    def check() -> bool:          # raises while the study is not created yet
        return any(t.state == TS.RUNNING and len(t.intermediate_values) >= epochs
                   for t in _study(url, name).get_trials(deepcopy=False))
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
    space = write_space(tmp_path, study="crash", budget={"n_trials": 3}, parallel=2, epochs=4,
                        pruner=NO_PRUNING, recovery=FAST_RECOVERY)
    proc = start_cli("run", str(space), "--storage", pg_url, "--ray-address", ray_head, cwd=tmp_path)
    try:
        wait_for(_running_with_epochs(pg_url, "crash", 2), "a trial reached epoch 2", proc=proc)
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
    assert counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"] == 3 and counts["FAIL"] == 0, counts
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


def test_killed_worker_process_is_retried_and_the_sweep_completes(ray_head_node: tuple[subprocess.Popen[bytes], str],
                                                                  tmp_path: Path) -> None:
    head, ray_head = ray_head_node
    url = f"sqlite:///{tmp_path}/sweeps.db"
    space = write_space(tmp_path, study="worker-kill", budget={"n_trials": 2}, parallel=1, epochs=6,
                        pruner=NO_PRUNING, recovery=FAST_RECOVERY, checkpoints={"keep_best": 1})
    proc = start_cli("run", str(space), "--storage", url, "--ray-address", ray_head, cwd=tmp_path)
    try:
        running = _running_with_epochs(url, "worker-kill", 2)
        victims = wait_for(lambda: running() and trainer_processes(head), "a trainer past epoch 2", proc=proc)
        assert len(victims) == 1, [v.cmdline() for v in victims]      # the session's Ray head runs this sweep
        victims[0].kill()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert proc.returncode == 0, err[-3000:]
    trials = _study(url, "worker-kill").get_trials()
    failed = [t for t in trials if t.state == TS.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["reason"].startswith("worker lost"), failed
    assert failed[0].user_attrs["failure"] == "worker_lost"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].state in (TS.COMPLETE, TS.PRUNED)
    assert retry[0].user_attrs["faults"] == 1 and retry[0].user_attrs["start_epoch"] >= 2
    assert _configs(trials)["COMPLETE"] == 2
    _check_curves_continuous(trials)
    # keep_best: 1 -> only the best trial's configuration keeps its checkpoint (next to the SQLite file).
    best = _study(url, "worker-kill").best_trial
    [folder] = [p for p in (tmp_path / "sweeps_artifacts").iterdir()     # beside it: dashboard PNGs, and
                if p.is_dir() and p.name != "tensorboard"]                # the TensorBoard logs of every study
    kept = {p.name.split(".")[0] for p in folder.iterdir()}
    assert kept == {f"config-{best.user_attrs.get('config_id', best.number)}"}, kept


def test_a_stopped_trainer_is_replaced_as_stalled_and_the_sweep_completes(
        ray_head_node: tuple[subprocess.Popen[bytes], str], tmp_path: Path) -> None:
    """kill -STOP: the process lives and the coordinator beats, but the trial says nothing; past
    recovery.stall_timeout it is failed as stalled, its process killed and replaced, and it is retried."""
    head, ray_head = ray_head_node
    url = f"sqlite:///{tmp_path}/sweeps.db"
    space = write_space(tmp_path, study="hung", budget={"n_trials": 2}, parallel=1, epochs=6, pruner=NO_PRUNING,
                        recovery={**FAST_RECOVERY, "stall_timeout": 5})
    proc = start_cli("run", str(space), "--storage", url, "--ray-address", ray_head, cwd=tmp_path)
    try:
        running = _running_with_epochs(url, "hung", 2)
        [victim] = wait_for(lambda: running() and trainer_processes(head), "a trainer past epoch 2", proc=proc)
        victim.suspend()                                   # SIGSTOP
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert proc.returncode == 0, err[-3000:]
    assert not victim.is_running() or victim.status() == "zombie", "the stalled process should be killed"
    trials = _study(url, "hung").get_trials()
    [stalled] = [t for t in trials if t.state == TS.FAIL]
    assert stalled.user_attrs["reason"] == "stalled: no report for 5.0s" and stalled.user_attrs["failure"] == "stalled"
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == stalled.number]
    assert retry.state == TS.COMPLETE and retry.user_attrs["start_epoch"] >= 2
    assert _configs(trials)["COMPLETE"] == 2


@pytest.mark.parametrize("signals, code, name", [((signal.SIGINT, signal.SIGINT), 130, "Ctrl-C"),
                                                  ((signal.SIGTERM,), 143, "SIGTERM")])
def test_stop_now_exits_with_its_code_and_resume_elsewhere_continues_from_checkpoints(
        signals: tuple[int, ...], code: int, name: str, ray_head: str, tmp_path: Path) -> None:
    """Ctrl-C twice, or SIGTERM (docker stop, Kubernetes, a scheduler; it reaches the coordinator after Ray's
    own handler is set): running trials are recorded as interrupted with queued retries, and a resume from
    another folder, the storage in the environment, continues them from their checkpoints."""
    db = tmp_path / "store" / "sweeps.db"
    db.parent.mkdir()
    url = f"sqlite:///{db}"
    space = write_space(tmp_path, study="stopped", budget={"n_trials": 2}, parallel=1, epochs=6, pruner=NO_PRUNING)
    proc = start_cli("run", str(space), "--storage", url, "--ray-address", ray_head, cwd=tmp_path)
    try:
        wait_for(_running_with_epochs(url, "stopped", 2), "a trial reached epoch 2", proc=proc)
        for signum in signals:
            proc.send_signal(signum)
            time.sleep(0.5)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "sweeps resume stopped" in out
    trials = _study(url, "stopped").get_trials()
    [stopped] = [t for t in trials if t.state == TS.FAIL]
    assert stopped.user_attrs["reason"] == f"interrupted ({name})" and stopped.user_attrs["failure"] == "interrupted"
    assert [t.state for t in trials if t.user_attrs.get("retry_of") == stopped.number] == [TS.WAITING]
    assert not [t for t in trials if t.state == TS.RUNNING]

    elsewhere = tmp_path / "elsewhere"                   # another folder; the storage from the environment
    elsewhere.mkdir()
    result = run_cli("resume", "stopped", "--ray-address", ray_head, cwd=elsewhere, timeout=300, SWEEPS_STORAGE=url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (elsewhere / "sweeps.db").exists()
    trials = _study(url, "stopped").get_trials()
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == stopped.number]
    assert retry.state == TS.COMPLETE and retry.user_attrs["start_epoch"] >= 2
    assert retry.user_attrs["faults"] == 0                 # a stop is not the configuration's fault
    assert _configs(trials)["COMPLETE"] == 2
    _check_curves_continuous(trials)
    # The budget is met: a further resume starts nothing and says so.
    again = run_cli("resume", "stopped", "--storage", url, "--json", cwd=elsewhere)
    assert again.returncode == 0 and json.loads(again.stdout)["budget_met"] is True
    assert len(_study(url, "stopped").get_trials()) == len(trials)


def _space(tmp_path: Path, **changes: object) -> SweepConfig:
    return from_dict(yaml.safe_load(write_space(tmp_path, **changes).read_text()), source="test")


def test_postgresql_restart_mid_sweep_loses_nothing(tmp_path: Path) -> None:
    """The coordinator (in this process, trials on its in-process dispatcher) rides out a real restart."""
    cluster = PgCluster()
    try:
        cluster.start()
        config = _space(tmp_path, study="outage", budget={"n_trials": 2}, parallel=1, epochs=5, pruner=NO_PRUNING,
                        recovery={"heartbeat_interval": 1, "grace_period": 30})
        said: list[str] = []
        outage = _once_a_trial_reports(cluster.url, "outage", lambda: _restart(cluster, after=3))
        run_sweep(config, cluster.url, dispatcher=InlineDispatcher(Scripted(delay=0.2)),
                  on_progress=lambda p: said.append(p.last))
        outage.join()
        assert any(line.startswith("database unreachable") for line in said), "the outage should have been waited out"
        trials = _study(cluster.url, "outage").get_trials()
        assert len(trials) == 2 and all(t.state == TS.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
        for t in trials:
            assert sorted(t.intermediate_values) == list(range(1, 6)), (t.number, t.intermediate_values)
    finally:
        cluster.destroy()


def _once_a_trial_reports(url: str, name: str, fault: Callable[[], None]) -> threading.Thread:
    """A thread that makes ``fault`` happen once a trial of study ``name`` has reported an epoch."""
    def wait_then_fault() -> None:
        wait_for(_running_with_epochs(url, name, 1), "a trial reported an epoch", timeout=60)
        fault()

    thread = threading.Thread(target=wait_then_fault)
    thread.start()
    return thread


def _restart(cluster: PgCluster, after: float) -> None:
    cluster.stop()
    time.sleep(after)
    cluster.start()


def test_database_gone_too_long_stops_clearly_and_resume_continues(tmp_path: Path) -> None:
    cluster = PgCluster()
    try:
        cluster.start()
        config = _space(tmp_path, study="gone", budget={"n_trials": 2}, parallel=1, epochs=4, pruner=NO_PRUNING,
                        recovery={"heartbeat_interval": 1, "grace_period": 4, "database_timeout": 3})
        outage = _once_a_trial_reports(cluster.url, "gone", cluster.stop)
        with pytest.raises(DatabaseUnavailable) as gone:
            run_sweep(config, cluster.url, dispatcher=InlineDispatcher(Scripted(delay=0.3)))
        outage.join()
        message = str(gone.value)
        assert "database has been unreachable for 3s" in message and "sweeps resume" in message
        assert "\n" not in message
        cluster.start()
        resume_sweep("gone", cluster.url, dispatcher=InlineDispatcher(Scripted()))
        counts = _configs(_study(cluster.url, "gone").get_trials())
        assert counts["COMPLETE"] == 2 and counts["RUNNING"] == counts["WAITING"] == 0, counts
    finally:
        cluster.destroy()


@pytest.fixture()
def far_database() -> Iterator[tuple[Netns, PgCluster]]:
    """PostgreSQL on another host (a network namespace on this machine) that the test can cut off silently."""
    netns = Netns()
    cluster = None
    try:
        cluster = PgCluster(netns)
        cluster.start()
        yield netns, cluster
    finally:
        netns.mend()
        if cluster is not None:
            cluster.destroy()
        netns.close()


def test_a_silent_network_drop_is_noticed_and_the_sweep_stops_within_its_database_timeout(
        far_database: tuple[Netns, PgCluster], tmp_path: Path) -> None:
    """Packets to the database vanish (nothing closes the connection): keepalives and tcp_user_timeout end the
    call in seconds, the retries run out after database_timeout, and resume continues once the network is back."""
    netns, cluster = far_database
    config = _space(tmp_path, study="dropped", budget={"n_trials": 2}, parallel=1, epochs=4, pruner=NO_PRUNING,
                    recovery={"heartbeat_interval": 1, "grace_period": 4, "database_timeout": 5})
    cut_at: list[float] = []
    cutter = _once_a_trial_reports(cluster.url, "dropped", lambda: (netns.cut(), cut_at.append(time.monotonic())))
    with pytest.raises(DatabaseUnavailable, match="unreachable for 5s"):
        run_sweep(config, cluster.url, dispatcher=InlineDispatcher(Scripted(delay=0.3)))
    cutter.join()
    assert time.monotonic() - cut_at[0] < 30, "noticed within seconds, not TCP's quarter of an hour"
    netns.mend()
    resume_sweep("dropped", cluster.url, dispatcher=InlineDispatcher(Scripted()))
    counts = _configs(_study(cluster.url, "dropped").get_trials())
    assert counts["COMPLETE"] == 2 and counts["RUNNING"] == counts["WAITING"] == 0, counts


def test_ctrl_c_during_a_silent_network_drop_stops_within_seconds(far_database: tuple[Netns, PgCluster],
                                                                       tmp_path: Path) -> None:
    netns, cluster = far_database
    config = _space(tmp_path, study="patience", budget={"n_trials": 2}, parallel=1, epochs=4, pruner=NO_PRUNING,
                    recovery={"heartbeat_interval": 1, "grace_period": 4, "database_timeout": 300})
    pressed: list[float] = []

    def cut_then_ctrl_c() -> None:
        netns.cut()
        time.sleep(2)
        os.kill(os.getpid(), signal.SIGINT)           # with no database, one Ctrl-C stops at once
        pressed.append(time.monotonic())

    presser = _once_a_trial_reports(cluster.url, "patience", cut_then_ctrl_c)
    with pytest.raises(StoppedDuringOutage) as stopped:
        run_sweep(config, cluster.url, dispatcher=InlineDispatcher(Scripted(delay=0.3)))
    presser.join()
    assert time.monotonic() - pressed[0] < 25, "not the 300 s database_timeout"
    assert stopped.value.exit_code == 130 and "stopped by Ctrl-C while the database was unreachable" in str(stopped.value)


def test_resume_where_the_dataset_is_missing_is_one_clear_line(tmp_path: Path) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = tmp_path / "data" / "digits.npz"
    data.parent.mkdir()
    np.savez(data, x_train=digits.images.astype("float32") / 16.0, y_train=digits.target)
    url = f"sqlite:///{tmp_path}/sweeps.db"
    config = _space(tmp_path, study="moved", budget={"n_trials": 1}, parallel=1, epochs=1,
                    dataset={"name": "npz", "path": str(data)})
    run_sweep(config, url, dispatcher=InlineDispatcher(Scripted()))
    data.rename(tmp_path / "elsewhere.npz")                 # "another machine" without the file
    before = [(t.number, t.state) for t in _study(url, "moved").get_trials()]
    result = run_cli("resume", "moved", "--storage", url, "--n-trials", "2", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "not reachable from this machine" in line and str(data) in line and "Traceback" not in result.stderr
    study = _study(url, "moved")
    assert [(t.number, t.state) for t in study.get_trials()] == before
    assert study.user_attrs["sweeps:config"]["budget"]["n_trials"] == 1     # the failed resume changed nothing
