"""The process tree of a `sweeps` command: find its Ray trainer processes, or kill all of it as a lost machine
would lose it. Shared by the recovery tests and benchmarks/chaos.py."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import psutil


def trainer_processes(proc: subprocess.Popen[Any]) -> list[psutil.Process]:
    """Ray worker processes training a trial right now under ``proc``: a coordinator that started its own Ray,
    or a Ray head that runs the trials of coordinators connected to it."""
    found = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "TrainerWorker.train" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """kill -9 the coordinator, then whatever it started (its Ray)."""
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=30)
