"""Storage URLs: masking, defaults, and a real PostgreSQL connection."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from sweeps import storage
from sweeps.errors import SweepsError


@pytest.mark.parametrize("url, shown", [
    ("postgresql://user:secret@host:5432/db", "postgresql://user:***@host:5432/db"),
    ("postgresql+psycopg2://u:p%40ss@h/db?sslmode=require", "postgresql+psycopg2://u:***@h/db?sslmode=require"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
    ("sqlite:///sweeps.db", "sqlite:///sweeps.db"),
    ("error at postgresql://a:b@c/d and mysql://x:y@z/w", "error at postgresql://a:***@c/d and mysql://x:***@z/w"),
])
def test_mask(url: str, shown: str) -> None:
    assert storage.mask(url) == shown


AWKWARD = [(c, form) for c in string.printable if c not in "\t\n\r\x0b\x0c" for form in ("raw", "encoded")
           if not (form == "raw" and c in "@%")]       # a raw '@' ends the password; a raw '%' starts an escape


@pytest.mark.parametrize("char, form", AWKWARD)
def test_a_resolved_password_is_masked_whatever_it_holds(char: str, form: str) -> None:
    """Every printable character in a password, as written or percent-encoded: printed as ***."""
    import sqlalchemy

    password = f"pw{char}pw{char}pw"
    written = password if form == "raw" else quote(password, safe="")
    url = f"postgresql://user:{written}@db.example:5432/sweeps"
    storage.resolve_url(url)
    parsed = str(sqlalchemy.engine.make_url(url).password)
    shown = storage.mask(f"error: cannot reach the database at {url}; check it")
    assert written not in shown and parsed not in shown and "user:***@db.example:5432/sweeps" in shown, shown


def test_resolve_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    assert storage.resolve_url(None) == "sqlite:///sweeps.db"
    monkeypatch.setenv("SWEEPS_STORAGE", "sqlite:///env.db")
    assert storage.resolve_url(None) == "sqlite:///env.db"
    assert storage.resolve_url("sqlite:///arg.db") == "sqlite:///arg.db"


def test_postgresql_connection_is_named_and_bounded(pg_url: str) -> None:
    import sqlalchemy

    s = storage.open_storage(pg_url)
    assert s.engine.dialect.driver == "psycopg2"
    with s.engine.connect() as conn:
        name = conn.execute(sqlalchemy.text("SHOW application_name")).scalar()
    assert name == storage.APPLICATION_NAME
    s.engine.dispose()


def test_a_service_file_url_keeps_the_password_off_the_command_line(pg_url: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """postgresql:///?service=NAME: libpq reads host, user, database (and a password, or ~/.pgpass) from
    PGSERVICEFILE, so `ps` shows no secret."""
    import optuna
    import sqlalchemy

    target = sqlalchemy.engine.make_url(pg_url)
    (tmp_path / "pg_service.conf").write_text(f"[sweeps_test]\nhost={target.host}\nport={target.port or 5432}\n"
                                              f"user={target.username}\ndbname={target.database}\n"
                                              + (f"password={target.password}\n" if target.password else ""))
    monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "pg_service.conf"))
    s = storage.open_storage("postgresql:///?service=sweeps_test")
    optuna.create_study(storage=s, study_name="through-a-service")
    assert "through-a-service" in optuna.get_all_study_names(storage.driver_url(pg_url))
    s.engine.dispose()


def test_not_a_url() -> None:
    with pytest.raises(SweepsError, match="is not a database URL"):
        storage.open_storage("sweeps.db")


def test_two_processes_creating_one_sqlite_file_at_once_both_succeed(tmp_path: Path) -> None:
    """A dashboard or a second coordinator opening the file while `sweeps run` creates it: no IntegrityError."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/race.db"
    code = ("import sys; from sweeps.storage import open_storage; "
            "[open_storage(sys.argv[1], create=True) for _ in range(1)]; print('ok')")
    for _ in range(3):
        (tmp_path / "race.db").unlink(missing_ok=True)
        procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-500:] for _, err in outs]


def test_a_schema_created_by_another_opener_meanwhile_is_found_in_place(own_pg_url: str) -> None:
    """`sweeps run`, a dashboard or a reader opening a fresh database together: another opener creates a table
    between this one's check and its CREATE, which PostgreSQL answers with DuplicateTable (a ProgrammingError,
    seen in CI); the next attempt must find the schema in place."""
    import sqlalchemy

    other = sqlalchemy.create_engine(storage.driver_url(own_pg_url), isolation_level="AUTOCOMMIT")
    raced: list[str] = []

    def other_opener_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().startswith("CREATE TABLE studies") and not raced:
            raced.append(statement)
            with other.connect() as c:                  # the other opener wins the race
                c.execute(sqlalchemy.text(statement))

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", other_opener_first)
    try:
        opened = storage.open_storage(own_pg_url, create=True)
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", other_opener_first)
    assert raced, "the race should have been run"
    assert opened.get_all_studies() == []                  # the whole schema is there and usable
    opened.engine.dispose()
    other.dispose()


@pytest.mark.parametrize("where", ["postgresql", "sqlite"])
def test_user_attrs_in_one_write_read_back_as_optuna_writes_them(where: str, pg_url: str, tmp_path: Path) -> None:
    import optuna

    url = pg_url if where == "postgresql" else f"sqlite:///{tmp_path}/attrs.db"
    study = optuna.create_study(study_name=f"attrs-{tmp_path.name}", storage=storage.open_storage(url, create=True))
    backend = storage.backend(study)
    trial = study.ask()
    trial.set_user_attr("seed", 1)                                  # Optuna's own write, replaced below
    storage.set_user_attrs(backend, trial._trial_id, {"seed": 7, "matrix": [[1, 2], [3, 4]], "note": "ok"})
    assert study.trials[0].user_attrs == {"seed": 7, "matrix": [[1, 2], [3, 4]], "note": "ok"}
    study.tell(trial, 0.5)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_user_attrs(backend, trial._trial_id, {"seed": 8, "late": True})
    assert study.trials[0].user_attrs == {"seed": 7, "matrix": [[1, 2], [3, 4]], "note": "ok"}   # nothing of it stored
    backend.engine.dispose()
