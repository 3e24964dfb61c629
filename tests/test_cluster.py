"""Multi-machine without Docker, on one machine: a Ray head and a second Ray node as separate
processes on loopback, a sweep dispatched through the head, trials landing on both nodes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import optuna
import pytest

from sweeps.storage import driver_url
from tests.conftest import run_cli, write_space

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    """A port outside Ray's worker range (10002-19999)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 20000:
            return port


def _node(*args: str, temp_dir: Path, gpus: int = 0, cpus: int = 1) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                             f"--num-gpus={gpus}", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """`ray start --block` stops its node's processes when it is terminated."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)


def _head(tmp_path: Path, **resources: int) -> tuple[subprocess.Popen[bytes], str]:
    """A Ray head on a free loopback port, once `ray status` answers; its process and address."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _node("--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats",
                 temp_dir=tmp_path, **resources)
    deadline = time.monotonic() + 90
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    while subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True).returncode:
        if head.poll() is not None or time.monotonic() > deadline:
            _stop(head)
            raise AssertionError("the Ray head did not start")
        time.sleep(1)
    return head, address


@pytest.fixture()
def two_nodes(tmp_path: Path) -> Iterator[str]:
    head, address = _head(tmp_path)
    worker = None
    try:
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        deadline = time.monotonic() + 90
        worker = _node(f"--address={address}", temp_dir=tmp_path)
        while True:
            status = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True)
            if status.stdout.count("node_") >= 2:
                break
            assert worker.poll() is None and time.monotonic() < deadline, "the second Ray node did not join"
            time.sleep(1)
        yield address
    finally:
        if worker is not None:
            _stop(worker)
        _stop(head)


def test_sweep_through_a_ray_head_lands_on_both_nodes(two_nodes: str, pg_url: str, tmp_path: Path) -> None:
    space = write_space(tmp_path, study="cluster", budget={"n_trials": 4}, parallel=2, epochs=2,
                        pruner={"name": "none"})
    result = run_cli("run", str(space), "--storage", pg_url, "--ray-address", two_nodes, cwd=tmp_path,
                     timeout=400, RAY_AUTH_MODE="disabled")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="cluster", storage=driver_url(pg_url)).get_trials()
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    nodes = {t.user_attrs["node"] for t in trials}
    assert len(nodes) == 2, nodes                      # one trial slot per one-CPU node: both used
    assert all(t.user_attrs["node_ip"] for t in trials)       # Ray picks the address it registers itself
    assert len({t.user_attrs["host"] for t in trials}) == 1    # two nodes, one machine
    assert {t.user_attrs["device"] for t in trials} == {"CPU"}


@pytest.fixture()
def gpu_head(tmp_path: Path) -> Iterator[str]:
    """A one-node Ray cluster that declares one GPU: Ray's real GPU accounting, trials on the CPU."""
    head, address = _head(tmp_path, gpus=1, cpus=2)
    try:
        yield address
    finally:
        _stop(head)


def test_gpu_hour_budget_stops_launching_and_packs_two_trials_per_gpu(gpu_head: str, tmp_path: Path) -> None:
    budget = 0.003           # 10.8 GPU-seconds: two trials of half a GPU spend it in about 11 s of wall time
    space = write_space(tmp_path, study="gpu-budget", budget={"n_trials": 40, "gpu_hours": budget}, parallel=2,
                        epochs=3, resources={"cpus": 1, "gpus": 0.5}, pruner={"name": "none"})
    url = f"sqlite:///{tmp_path}/sweeps.db"
    done = run_cli("run", str(space), "--storage", url, "--ray-address", gpu_head, "--json", timeout=600,
                   RAY_AUTH_MODE="disabled")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert "GPU-hour budget of 0.003 reached" in summary["stopped_by"]
    trials = optuna.load_study(study_name="gpu-budget", storage=url).trials
    finished = [t for t in trials if t.state.is_finished()]
    assert 2 <= len(finished) < 40 and len(finished) == len(trials)
    spent = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in finished) * 0.5 / 3600
    assert spent >= budget and summary["gpu_hours"] >= budget
    # no trial started after the budget was spent: the last start came before the hours ran out
    starts = sorted(t.datetime_start for t in finished)
    spent_before_last = sum((min(t.datetime_complete, starts[-1]) - t.datetime_start).total_seconds()
                            for t in finished if t.datetime_start < starts[-1]) * 0.5 / 3600
    assert spent_before_last < budget
    # Ray packed two half-GPU trials on the one GPU at once
    overlapping = any(a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
                      for i, a in enumerate(finished) for b in finished[i + 1:])
    assert overlapping
    status = run_cli("status", "gpu-budget", "--storage", url)
    assert "GPU" in status.stdout and "of 0.003 h" in status.stdout
