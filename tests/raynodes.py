"""Ray nodes as separate processes on loopback (`ray start --block`), stopped by their own handles.

Used for the session's shared Ray head (conftest.py), which most end-to-end sweeps
reach with --ray-address instead of each starting and stopping a private local Ray,
and by the cluster tests for heads and nodes of their own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    """A port outside Ray's worker range (10002-19999)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 20000:
            return port


def node(*args: str, gpus: int = 0, cpus: int = 1, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **ENV, **(env or {})}
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
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
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = node("--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats",
                gpus=gpus, cpus=cpus, env=env)
    deadline = time.monotonic() + 90
    while not nodes_up(address):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError("the Ray head did not start")
        time.sleep(1)
    return proc, address
