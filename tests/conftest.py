"""Shared fixtures: a fresh PostgreSQL database per test session, the CLI as a real process.

PostgreSQL is reached through SWEEPS_TEST_PG_ADMIN (an admin URL; default the
trust-auth server on 127.0.0.1:5432 that .ci/run makes sure of). Each session
creates its own database and drops it at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"          # screenshots and the like, kept for CI (git-ignored)
SESSION_STARTED = time.time()


def keep_artifact(name: str) -> Path:
    """A path under test-artifacts/ that the session summary lists."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name the artifacts this session wrote (test modules import this file under another name than
    pytest does, so the list is read from the folder, not from a variable)."""
    for path in sorted(ARTIFACTS.glob("*")) if ARTIFACTS.exists() else []:
        if path.stat().st_mtime >= SESSION_STARTED:
            terminalreporter.write_line(f"test artifact: {path}")
ADMIN_URL = os.environ.get("SWEEPS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session", autouse=True)
def _private_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Checkpoints of PostgreSQL sweeps go to $XDG_DATA_HOME/sweeps: keep them out of the real home."""
    old = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))
    yield
    if old is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = old


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a database made for this test session (dropped afterwards)."""
    import sqlalchemy

    from sweeps.storage import driver_url

    admin_url = driver_url(ADMIN_URL)
    name = f"sweeps_test_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as e:
        pytest.fail(f"PostgreSQL not reachable at {ADMIN_URL} ({e.orig}); start it (see README) or set SWEEPS_TEST_PG_ADMIN")
    base = ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def ray_head(_private_data_home: None) -> Iterator[str]:
    """The address of one Ray head (2 CPUs) for the whole session, stopped at its end.

    Sweeps that do not look for their trainer processes, read the Ray session's
    logs or give their workers an environment of their own run on it with
    --ray-address: a private local Ray costs about 6 s to start and stop per
    sweep. Its workers inherit this process's environment (and so the private
    XDG_DATA_HOME).
    """
    from tests import raynodes

    os.environ["RAY_AUTH_MODE"] = "disabled"     # for in-process clients (the head has no token)
    proc, address = raynodes.head(cpus=2, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
    try:
        yield address
    finally:
        raynodes.stop(proc)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SWEEPS_STORAGE"}
    env.update(PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", RAY_AUTH_MODE="disabled", **extra)
    return env


def run_cli(*args: str, cwd: Path | str | None = None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """`sweeps ARGS` as a separate process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd or ROOT, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start_cli(*args: str, cwd: Path | str | None = None, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd or ROOT, env=cli_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


TINY_SPACE: dict[str, Any] = {
    "study": "tiny",
    "dataset": {"name": "digits"},
    "epochs": 3,
    "seed": 0,
    "sampler": {"name": "random"},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    "budget": {"n_trials": 4},
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
# about 5 s on these cores), and architecture conditions have their own sweep test (test_sweep.py).
SWEEP_PARAMETERS: dict[str, Any] = {
    **{k: v for k, v in TINY_SPACE["parameters"].items() if k != "depth"}, "architecture": "simple_cnn"}


def write_space(folder: Path, name: str = "space.yaml", **changes: Any) -> Path:
    """A tiny, fast sweep YAML (digits, 3 epochs, simple_cnn with 8 filters) with top-level keys replaced."""
    space = {**TINY_SPACE, "parameters": SWEEP_PARAMETERS, **changes}
    path = folder / name
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path
