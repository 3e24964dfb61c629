"""What the tests share that is not a fixture: the CLI as a real process, tiny sweep spaces, waiting, ports.

Fixtures (a PostgreSQL database per session, the session's Ray head) are in
``conftest.py``; this module is imported by name.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml

from sweeps.storage import driver_url

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"          # screenshots and the like, kept for CI (git-ignored)
# An admin URL of the PostgreSQL server that test sessions make their databases on (.ci/run makes sure of it).
ADMIN_URL = os.environ.get("SWEEPS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def keep_artifact(name: str) -> Path:
    """A path under test-artifacts/ that the session summary lists."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def wait_for(check: Callable[[], Any], what: str, *, timeout: float = 240, proc: Any = None,
             interval: float = 0.2, ignore: tuple[type[BaseException], ...] = (Exception,)) -> Any:
    """Call ``check`` until it returns something true (returned); fail after ``timeout`` seconds, or as soon
    as ``proc`` (a process the wait depends on) has ended. ``check`` may raise one of ``ignore`` while the
    thing is not there yet (a table not created, a server not listening)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except ignore:
            found = None
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read()[-2000:] if getattr(proc, "stderr", None) else ""
            raise AssertionError(f"the process ended before {what}: {err}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


@functools.cache
def _plain_storage(url: str) -> optuna.storages.RDBStorage:
    """One storage per URL for the tests' own reads. Each ``optuna.load_study(storage=URL)`` makes an engine of
    its own whose connections stay open until garbage collection: polled in a wait, they filled PostgreSQL's
    100 connections while other tests' sweeps needed some."""
    if url.startswith("postgres"):
        return optuna.storages.RDBStorage(driver_url(url), engine_kwargs={"pool_size": 1, "max_overflow": 2,
                                                                          "pool_pre_ping": True})   # restarts
    return optuna.storages.RDBStorage(url)


def plain_study(name: str, url: str) -> optuna.Study:
    """The study as plain Optuna reads it, through one storage per URL."""
    return optuna.load_study(study_name=name, storage=_plain_storage(url))


def free_port(above: int = 0) -> int:
    """A free port on loopback, above ``above`` (Ray's worker ports are 10002-19999: pass 20000 for a Ray head)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > above:
            return port


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SWEEPS_STORAGE"}
    env.update(PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", RAY_AUTH_MODE="disabled", **extra)
    return env


def run_cli(*args: str, cwd: Path | str | None = None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """`sweeps ARGS` as a separate process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd or ROOT, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start_cli(*args: str, cwd: Path | str | None = None, preexec_fn: Callable[[], Any] | None = None,
              **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd or ROOT, env=cli_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            preexec_fn=preexec_fn)


TINY_SPACE: dict[str, Any] = {
    "study": "tiny",
    "dataset": {"name": "digits"},
    "epochs": 3,
    "seed": 0,
    "sampler": {"name": "random"},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    "budget": {"n_trials": 4},
    "finalists": 0,            # tests that want finalists ask for them
    "parallel": 2,
    "resources": {"cpus": 1},
    "parameters": {
        "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
        "batch_size": 64,
        "optimizer": {"values": ["adam", "sgd"]},
        "momentum": {"low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}},
        "architecture": {"values": ["simple_cnn", "resnet"]},
        "width": 8,
        "depth": {"values": [1], "when": {"architecture": "resnet"}},
    },
}


# End-to-end sweeps search simple_cnn only: a resnet trial costs twice as much (its graph traces for
# about 5 s on these cores); conditional parameters are tested in test_space.py and test_coordinator.py.
SWEEP_PARAMETERS: dict[str, Any] = {
    **{k: v for k, v in TINY_SPACE["parameters"].items() if k != "depth"}, "architecture": "simple_cnn"}


def write_space(folder: Path, name: str = "space.yaml", **changes: Any) -> Path:
    """A tiny, fast sweep YAML (digits, 3 epochs, simple_cnn with 8 filters) with top-level keys replaced."""
    space = {**TINY_SPACE, "parameters": SWEEP_PARAMETERS, **changes}
    path = folder / name
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def cli_here(capsys: Any, *args: str) -> tuple[int, str, str]:
    """`sweeps ARGS` in this process (exit code, stdout, stderr): the same parsing, function and printing as
    a user's command, without a new process that imports TensorFlow again."""
    from sweeps import cli

    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
