"""Ray nodes as separate processes on loopback (`ray start --block`), stopped by their own handles.

Used for the session's shared Ray head (conftest.py), which most end-to-end sweeps
reach with --ray-address instead of each starting and stopping a private local Ray,
and by the cluster tests for a second node that joins it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import free_port, wait_for

RAY = str(Path(sys.executable).parent / "ray")
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def node(*args: str, gpus: int = 0, cpus: int = 1, env: dict[str, str] | None = None,
         node_ip: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **ENV, **(env or {})}
    return subprocess.Popen([RAY, "start", "--block", f"--node-ip-address={node_ip}", f"--num-cpus={cpus}",
                             f"--num-gpus={gpus}", *args], env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)


CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")   # where `ray start --head` leaves its address


def stop(proc: subprocess.Popen[bytes]) -> None:
    """`ray start --block` stops its node's processes when it is terminated.

    A head's address file is left behind, though, and a later plain `ray.init()` on this machine would try
    to join the stopped head: remove it when it still names this head's port.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
    port = next((a.split("=", 1)[1] for a in proc.args if isinstance(a, str) and a.startswith("--port=")), None)
    try:
        if port and CURRENT_CLUSTER.read_text().strip().endswith(f":{port}"):
            CURRENT_CLUSTER.unlink()
    except OSError:
        pass                      # no file, or another head's: nothing of ours to remove


def nodes_up(address: str) -> int:
    """How many nodes `ray status` lists at ``address`` (0 while it does not answer)."""
    status = subprocess.run([RAY, "status", f"--address={address}"], env={**os.environ, **ENV},
                            capture_output=True, text=True)
    return status.stdout.count("node_") if status.returncode == 0 else 0


def head(*, gpus: int = 0, cpus: int = 1, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A Ray head on a free loopback port, once `ray status` answers; its process and address."""
    port = free_port(above=20000)     # outside Ray's worker range (10002-19999)
    address = f"127.0.0.1:{port}"
    proc = node("--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats",
                gpus=gpus, cpus=cpus, env=env)
    try:
        wait_for(lambda: nodes_up(address), "the Ray head to answer", timeout=90, proc=proc, interval=1)
    except AssertionError:
        stop(proc)
        raise
    return proc, address
