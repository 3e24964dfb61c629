"""A database password planted in the storage URL must not appear anywhere sweeps writes or prints."""

from __future__ import annotations

import glob
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import sqlalchemy

from sweeps.storage import driver_url
from tests.helpers import ADMIN_URL, cli_here, plain_study, start_cli, wait_for, write_space

pytestmark = pytest.mark.slow


@pytest.fixture()
def password_url() -> Iterator[tuple[str, str]]:
    """A role with a planted password and its own database, dropped afterwards."""
    password = f"planted-{uuid.uuid4().hex}"
    role = f"sweeps_pw_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(driver_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        c.execute(sqlalchemy.text(f"GRANT {role} TO CURRENT_USER"))    # a non-superuser admin may then own-assign
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{role}" OWNER {role}'))
    host = sqlalchemy.engine.make_url(driver_url(ADMIN_URL))
    try:
        yield f"postgresql://{role}:{password}@{host.host}:{host.port or 5432}/{role}", password
    finally:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{role}" WITH (FORCE)'))
            c.execute(sqlalchemy.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_planted_password_appears_nowhere(password_url: tuple[str, str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    url, password = password_url
    secret = password.encode()
    ray_sessions_before = set(glob.glob("/tmp/ray/session_*"))
    space = write_space(tmp_path, study="secret", budget={"n_trials": 2}, parallel=1, epochs=2,
                        pruner={"name": "none"}, checkpoints={"store": str(tmp_path / "artifacts")})
    # The sweep: a process with its own local Ray; the URL in SWEEPS_STORAGE and a cloud key in its environment.
    proc = start_cli("run", str(space), cwd=tmp_path, SWEEPS_STORAGE=url, AWS_SECRET_ACCESS_KEY=password)
    try:
        study_url = driver_url(url)
        wait_for(lambda: any(t.state.name == "RUNNING" and t.intermediate_values for t in
                             plain_study("secret", study_url).get_trials()),
                 "a trial to report an epoch", proc=proc)
        ray_processes = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in ray_processes), "the sweep's own Ray should run"
        for child in ray_processes:          # workers never hold credentials: the coordinator stores everything
            try:
                environ = Path(f"/proc/{child.pid}/environ").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue
            assert secret not in environ, child.cmdline()
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    printed = [out + err]
    monkeypatch.chdir(tmp_path)
    for args in (["status", "secret", "--storage", url], ["status", "secret", "--storage", url, "--json"],
                 ["best", "secret", "--storage", url, "--json"], ["ls", "--storage", url],
                 ["report", "secret", "--storage", url, "--out", str(tmp_path / "report")],
                 ["export", "secret", "--storage", url, "--format", "keras", "--out", str(tmp_path / "model")],
                 ["run", str(space), "--storage", url]):            # fails: the study exists (an error line)
        _, out, err = cli_here(capsys, *args)                       # the same commands, in this process
        printed.append(out + err)
    assert printed[0].count("complete") >= 1 and "already exists" in printed[-1]
    for text in printed:
        assert password not in text
    assert any("***" in text for text in printed)     # URLs are shown, masked

    # Everything written: report, exported model, checkpoints and artifacts, the working folder.
    written = _files_under(tmp_path)
    assert any(p.suffix == ".html" for p in written) and any(p.suffix == ".keras" for p in written)
    for path in written:
        assert secret not in path.read_bytes(), path

    # Everything stored in the database: study and trial attributes, system attributes included.
    engine = sqlalchemy.create_engine(driver_url(url))
    with engine.connect() as c:
        for table in ("study_user_attributes", "study_system_attributes", "trial_user_attributes",
                      "trial_system_attributes", "trial_params", "studies"):
            rows = c.execute(sqlalchemy.text(f"SELECT * FROM {table}")).all()
            assert password not in json.dumps([list(map(str, r)) for r in rows]), table
    engine.dispose()

    # Ray's logs of the sweep (the driver's command line included).
    new_sessions = set(glob.glob("/tmp/ray/session_*")) - ray_sessions_before
    assert new_sessions, "the sweep should have started a local Ray"
    for session in new_sessions:
        for path in _files_under(Path(session)):
            if path.is_file() and not path.is_symlink() and os.path.getsize(path) < 50_000_000:
                assert secret not in path.read_bytes(), path
