"""Multi-machine without Docker, on one machine: a Ray head and a second Ray node as separate
processes on loopback, a sweep dispatched through the head, trials landing on both nodes."""

from __future__ import annotations

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


def _node(*args: str, temp_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
                             *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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


@pytest.fixture()
def two_nodes(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _node("--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats",
                 temp_dir=tmp_path)
    worker = None
    try:
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        deadline = time.monotonic() + 90
        while subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True).returncode:
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(1)
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
