"""A throwaway PostgreSQL cluster on loopback that a test can stop and start at will.

The shared server is not ours to restart, so the database-outage test runs its
own cluster (initdb + pg_ctl, about 1.5 s) and stops it by its own handle.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

from tests.helpers import free_port
from tests.netns import Netns


def _bin(name: str) -> str:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    if not found:
        raise RuntimeError(f"{name} not found; install PostgreSQL (see README)")
    return found if isinstance(found, str) else found[0]


class PgCluster:
    """initdb into a fresh folder; start/stop/restart with pg_ctl; trust auth on 127.0.0.1 only, or, inside a
    network namespace (``netns``), on that host's address for the namespace's subnet."""

    def __init__(self, netns: Netns | None = None) -> None:
        self.netns = netns
        self.host = netns.ip if netns else "127.0.0.1"
        self.root = tempfile.mkdtemp(prefix="sweeps-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0      # initdb refuses to run as root
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        if netns:
            with open(os.path.join(self.data, "pg_hba.conf"), "a") as hba:
                hba.write(f"host all all {netns.subnet} trust\n")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        if self.as_postgres:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        if self.netns:
            cmd = (*self.netns.prefix(), *cmd)
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses={self.host} -c fsync=off"
        self._run(_bin("pg_ctl"), "-D", self.data, "-o", options, "-l", os.path.join(self.root, "log"), "-w", "start")

    def stop(self) -> None:
        self._run(_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass                                   # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
