"""Multi-machine without Docker, on one machine: a Ray head and a second Ray node as separate
processes on loopback, sweeps dispatched through the head: trials landing on both nodes, and two
trials packed on the head's one (declared) GPU under a GPU-hour budget."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from sweeps.storage import driver_url
from tests import raynodes
from tests.helpers import run_cli, wait_for, write_space

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes(ray_head: str) -> Iterator[str]:
    """The session's Ray head (2 CPUs) and, for this module, a second node with 2 CPUs and one GPU (declared:
    Ray's real GPU accounting, trials on the CPU), stopped by its own handle at the end."""
    before = raynodes.nodes_up(ray_head)
    worker = raynodes.node(f"--address={ray_head}", cpus=2, gpus=1)
    try:
        wait_for(lambda: raynodes.nodes_up(ray_head) > before, "the second Ray node to join", timeout=90,
                 proc=worker, interval=1)
        yield ray_head
    finally:
        raynodes.stop(worker)


def test_sweep_through_a_ray_head_lands_on_both_nodes(two_nodes: str, pg_url: str, tmp_path: Path) -> None:
    space = write_space(tmp_path, study="cluster", budget={"n_trials": 4}, parallel=2, epochs=2,
                        resources={"cpus": 2}, pruner={"name": "none"})       # 2 CPUs a trial: one per node
    result = run_cli("run", str(space), "--storage", pg_url, "--ray-address", two_nodes, cwd=tmp_path,
                     timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="cluster", storage=driver_url(pg_url)).get_trials()
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    nodes = {t.user_attrs["node"] for t in trials}
    assert len(nodes) == 2, nodes                      # one two-CPU trial slot per two-CPU node: both used
    assert all(t.user_attrs["node_ip"] for t in trials)       # Ray picks the address it registers itself
    assert len({t.user_attrs["host"] for t in trials}) == 1    # two nodes, one machine
    assert {t.user_attrs["device"] for t in trials} == {"CPU"}


def test_gpu_hour_budget_stops_launching_and_packs_two_trials_per_gpu(two_nodes: str, tmp_path: Path) -> None:
    budget = 0.003           # 10.8 GPU-seconds: two trials of half a GPU spend it in about 11 s of wall time
    space = write_space(tmp_path, study="gpu-budget", budget={"n_trials": 40, "gpu_hours": budget}, parallel=2,
                        epochs=3, resources={"cpus": 0.5, "gpus": 0.5}, pruner={"name": "none"})
    url = f"sqlite:///{tmp_path}/sweeps.db"
    done = run_cli("run", str(space), "--storage", url, "--ray-address", two_nodes, "--json", timeout=600)
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
