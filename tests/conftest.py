"""Shared fixtures: a fresh PostgreSQL database per test session, the session's Ray head. (What tests share
that is not a fixture is in ``tests/helpers.py``.)

PostgreSQL is reached through SWEEPS_TEST_PG_ADMIN (an admin URL; default the
trust-auth server on 127.0.0.1:5432 that .ci/run makes sure of). Each session
creates its own database and drops it at the end.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ADMIN_URL, ARTIFACTS

SESSION_STARTED = time.time()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name the artifacts this session wrote (read from the folder)."""
    for path in sorted(ARTIFACTS.glob("*")) if ARTIFACTS.exists() else []:
        if path.stat().st_mtime >= SESSION_STARTED:
            terminalreporter.write_line(f"test artifact: {path}")


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


def _database() -> Iterator[str]:
    """A new database on the admin server, dropped (with its connections) afterwards."""
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
def pg_url() -> Iterator[str]:
    """URL of a database made for this test session (dropped afterwards)."""
    yield from _database()


@pytest.fixture()
def own_pg_url() -> Iterator[str]:
    """URL of a database for one test alone: no other test's connections are in it."""
    yield from _database()


@pytest.fixture(scope="session")
def ray_head_node(_private_data_home: None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """One Ray head (2 CPUs) for the whole session, stopped at its end: its process and its address.

    Sweeps that do not read the Ray session's logs or give their workers an
    environment of their own run on it with --ray-address: a private local Ray
    costs about 6 s to start and stop per sweep. Its workers inherit this
    process's environment (and so the private XDG_DATA_HOME). The trainer
    processes of its sweeps are in its process tree.
    """
    from tests import raynodes

    os.environ["RAY_AUTH_MODE"] = "disabled"     # for in-process clients (the head has no token)
    proc, address = raynodes.head(cpus=2, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
    try:
        yield proc, address
    finally:
        raynodes.stop(proc)


@pytest.fixture(scope="session")
def ray_head(ray_head_node: tuple[subprocess.Popen[bytes], str]) -> str:
    """The address of the session's Ray head (``ray_head_node``)."""
    return ray_head_node[1]


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted for one test (a full disk on demand), unmounted by the test's end. Needs root,
    as the tests have on this project's machines and in CI."""
    where = tmp_path / "tiny"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
