"""Multi-machine without Docker, on one machine: a Ray head and a second Ray node as separate
processes on loopback, sweeps dispatched through the head: trials landing on both nodes, and two
trials packed on the head's one (declared) GPU under a GPU-hour budget."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from sweeps.storage import driver_url
from tests import raynodes
from tests.helpers import cli_env, free_port, run_cli, wait_for, write_space
from tests.netns import Netns

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


@pytest.fixture()
def remote_head() -> Iterator[tuple[Netns, str, str, Path]]:
    """A Ray head on this machine's side of a veth pair, and a second machine made of a network namespace
    that does not see the head's processes or files: (that namespace, the GCS address, the Ray Client address,
    the head's Ray folder)."""
    netns = Netns()
    port, client_port = free_port(above=20000), free_port(above=20000)
    temp_dir = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))    # short: socket paths live under it
    head = raynodes.node("--head", f"--port={port}", f"--ray-client-server-port={client_port}",
                         f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
                         cpus=2, node_ip=netns.outer_ip)
    try:
        address = f"{netns.outer_ip}:{port}"
        wait_for(lambda: raynodes.nodes_up(address), "the Ray head to answer", timeout=90, proc=head, interval=1)
        yield netns, address, f"ray://{netns.outer_ip}:{client_port}", temp_dir
    finally:
        raynodes.stop(head)
        netns.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _elsewhere(netns: Netns, hidden: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`sweeps ARGS` on "another machine": the namespace's network, its own processes (a new PID namespace
    with its own /proc), and the head's Ray folder hidden under an empty tmpfs."""
    script = f'mount -t tmpfs tmpfs {hidden} && exec "$@"'
    command = [*netns.prefix(), "unshare", "--mount", "--pid", "--fork", "--mount-proc", "sh", "-c", script, "driver",
               sys.executable, "-m", "sweeps.cli", *args]
    return subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=400,
                          stdin=subprocess.DEVNULL)


def _client_server_logs(head_folder: Path) -> str:
    """The ends of the head's Ray Client server logs, for a failure's message."""
    logs = sorted(head_folder.glob("session_latest/logs/ray_client_server*.err"))
    return "".join(f"\n--- {log.name}\n" + log.read_text(errors="replace")[-1500:] for log in logs)


def test_the_cluster_recipe_from_a_machine_that_is_no_ray_node(remote_head: tuple[Netns, str, str, Path],
                                                               tmp_path: Path) -> None:
    """The README's cluster recipe run from a machine with no Ray node of its own (the compose sweep service):
    by GCS address it is one clear line naming the fix, through Ray Client the sweep runs on the head."""
    netns, address, client, head_folder = remote_head
    space = write_space(tmp_path, study="far", budget={"n_trials": 2}, parallel=1, epochs=2, pruner={"name": "none"})
    url = f"sqlite:///{tmp_path}/sweeps.db"
    refused = _elsewhere(netns, head_folder, "run", str(space), "--storage", url, "--ray-address", address,
                         cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    [line] = refused.stderr.strip().splitlines()
    assert f"runs no Ray node of the cluster at {address}" in line and f"ray://{netns.outer_ip}:10001" in line
    assert not (tmp_path / "sweeps.db").exists() or not optuna.get_all_study_names(url), "nothing was stored"

    done = _elsewhere(netns, head_folder, "run", str(space), "--storage", url, "--ray-address", client, "--quiet",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:] + _client_server_logs(head_folder)
    trials = optuna.load_study(study_name="far", storage=url).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert {t.user_attrs["node_ip"] for t in trials} == {netns.outer_ip}      # trained on the head's machine
