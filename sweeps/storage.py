"""Storage URL -> Optuna storage, with secrets never printed.

Only the control plane calls this (DESIGN principle 1): workers never see a
URL. Connection problems become one line that names the (masked) URL and
the fix.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sweeps.errors import SweepsError

DEFAULT_URL = "sqlite:///sweeps.db"
ENV_VAR = "SWEEPS_STORAGE"
APPLICATION_NAME = "sweeps-coordinator"
# A network that drops packets without closing the connection (a cable, a firewall, a dead router) is
# noticed by the kernel in seconds instead of TCP's quarter of an hour: keepalive probes after 5 s idle
# (every 2 s, 3 tries) and unacknowledged data for 10 s end the connection, and the call is retried.
NETWORK = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
           "tcp_user_timeout": 10_000}
# A statement or lock wait the server never finishes (a lock held by a paused process) ends too.
SESSION_TIMEOUTS = {"statement_timeout": "120s", "lock_timeout": "60s"}

T = TypeVar("T")
# user:password@ after a scheme, as SQLAlchemy reads it: the user runs to the first ':', the password to the
# first '@' (an '@' in a password must be written %40). Whitespace ends a URL inside a message.
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")
_SECRETS: set[str] = set()      # passwords of the URLs this process resolved, as written and decoded


def resolve_url(url: str | None) -> str:
    """--storage, else $SWEEPS_STORAGE, else the SQLite file sweeps.db here; its password is remembered for mask."""
    resolved = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    _remember_password(resolved)
    return resolved


def _remember_password(url: str) -> None:
    """The password as SQLAlchemy parses it (the one the driver sends) and as written in the URL."""
    from urllib.parse import quote

    import sqlalchemy

    try:
        password = sqlalchemy.engine.make_url(url).password
    except Exception:      # not a URL SQLAlchemy reads: the pattern in mask still applies
        return
    if password:
        written = _PASSWORD.search(url)
        _SECRETS.update(p for p in (str(password), quote(str(password), safe=""),
                                    written["pw"] if written else "") if len(p) >= 4)


def mask(text: str) -> str:
    """Replace every password in ``text`` by ***: in any URL's user:password@, and wherever the password of a
    URL this process resolved appears (whatever characters it holds, percent-encoded or not)."""
    text = _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def driver_url(url: str) -> str:
    """Name psycopg2 in a bare PostgreSQL URL: SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which we do not ship."""
    for bare in ("postgres://", "postgresql://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare):]
    return url


def open_storage(url: str | None, *, create: bool = False) -> Any:
    """An Optuna RDBStorage for the URL, or a SweepsError naming what is wrong.

    A missing SQLite file is created only with ``create`` (by `run`), so that a
    mistyped path in `status` or `resume` is reported, not silently made.
    """
    import optuna
    import sqlalchemy.exc

    url = resolve_url(url)
    shown = mask(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "postgres")):
        url = driver_url(url)
        engine_kwargs["connect_args"] = {"connect_timeout": 10, "application_name": APPLICATION_NAME, **NETWORK}
        engine_kwargs["pool_size"] = 2
        engine_kwargs["max_overflow"] = 2
    elif url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        folder = os.path.dirname(os.path.abspath(path)) if path and path != ":memory:" else ""
        if folder and not os.path.isdir(folder):
            raise SweepsError(f"storage {shown}: folder {folder} does not exist; create it or choose another path")
        if path and path != ":memory:" and not create and not os.path.exists(path):
            raise SweepsError(f"storage {shown}: no such database file; run a sweep there first, or point --storage "
                              "(or $SWEEPS_STORAGE) at the right file")
        engine_kwargs["connect_args"] = {"timeout": 30}
    elif "://" not in url:
        raise SweepsError(f"storage {shown!r} is not a database URL; use sqlite:///sweeps.db or postgresql://user:password@host/db")
    try:
        for attempt in range(5):
            try:
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_compatibility_check=False)
                if storage.engine.dialect.name == "postgresql":
                    sqlalchemy.event.listen(storage.engine, "connect", _session_timeouts)
                    storage.engine.dispose()        # the connections made so far predate the listener
                return storage
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as e:
                # Another process (a dashboard, a second coordinator) created the schema at the same moment
                # (PostgreSQL: a unique violation, or DuplicateTable when it committed between our check and our
                # CREATE); the next attempt finds it in place.
                racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
                if attempt == 4 or not racing:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
    except sqlalchemy.exc.OperationalError as e:
        reason = mask(str(e.orig).strip().splitlines()[0]) if e.orig else "connection failed"
        raise SweepsError(
            f"cannot reach the database at {shown}: {reason}; check that the server runs and the URL "
            f"is right, or leave out --storage to use {DEFAULT_URL}"
        ) from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as e:
        raise SweepsError(f"storage {shown}: {mask(str(e).splitlines()[0])}; use sqlite:///FILE or "
                          "postgresql://user:password@host/db") from None
    except ImportError as e:
        raise SweepsError(f"storage {shown}: its database driver is not installed ({e.__cause__ or e}); "
                          "use postgresql:// (psycopg2) or sqlite:///") from None
    except RuntimeError as e:  # schema from another Optuna version
        raise SweepsError(f"storage {shown}: {mask(str(e).splitlines()[0])}") from None


def _session_timeouts(connection: Any, record: Any) -> None:
    """SET on each new connection rather than libpq's startup options, which PgBouncer refuses."""
    with connection.cursor() as cursor:
        for name, value in SESSION_TIMEOUTS.items():
            cursor.execute(f"SET {name} = '{value}'")
    connection.commit()


# -- surviving the database going away ---------------------------------------------------------

class DatabaseUnavailable(SweepsError):
    """The database stayed away longer than recovery.database_timeout."""


def is_transient(e: BaseException) -> bool:
    """A lost or refused connection (worth retrying), not a bad statement."""
    import optuna
    import sqlalchemy.exc as sa

    if isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ is not None:
        return is_transient(e.__cause__)
    if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
        return True
    return isinstance(e, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, sa.PendingRollbackError))


class StoppedDuringOutage(SweepsError):
    """A stop (Ctrl-C twice, SIGTERM) while the database was away: nothing more could be recorded."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def with_retry(fn: Callable[[], T], *, timeout: float, on_wait: Callable[[str], None] | None = None,
               stop: Callable[[], tuple[str, int] | None] = lambda: None) -> T:
    """Run ``fn``, retrying with exponential backoff while the database is unreachable.

    ``stop`` says whether the user asked to stop now (what, and the exit code): a wait for the database
    then ends at once instead of at the timeout.
    """
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"the database has been unreachable for {timeout:g}s ({_reason(e)}); the sweep is stopped with "
                    "its results stored; run `sweeps resume` when the database is back") from None
            if on_wait:
                on_wait(f"database unreachable ({_reason(e)}); retrying in {min(delay, left):.1f}s")
            wake = time.monotonic() + min(delay, left)
            while time.monotonic() < wake:
                asked = stop()
                if asked:
                    raise StoppedDuringOutage(
                        f"stopped by {asked[0]} while the database was unreachable ({_reason(e)}): its running "
                        "trials could not be recorded and stay RUNNING until the grace period; `sweeps resume` "
                        "retries them once the database is back", asked[1]) from None
                time.sleep(min(0.2, max(0.0, wake - time.monotonic())))
            delay = min(delay * 2, 10.0)


def _reason(e: BaseException) -> str:
    cause = e.__cause__ if e.__cause__ is not None else e
    orig = getattr(cause, "orig", None) or cause
    lines = str(orig).strip().splitlines()
    return mask(lines[0]) if lines else type(orig).__name__


def backend(study: Any) -> Any:
    """The RDBStorage under a study (Optuna wraps it in a cache layer)."""
    storage = study._storage
    return getattr(storage, "_backend", storage)


def set_user_attrs(storage: Any, trial_id: int, attrs: dict[str, Any]) -> None:
    """A trial's user attributes in one transaction.

    Optuna writes each attribute in a transaction of its own (a lookup, an
    upsert, a commit); a trial's dozen metrics made that a large share of the
    coordinator's own database round trips per trial (benchmarks 1 and 2).
    Same rows and the same upsert as RDBStorage._set_trial_attr_without_commit,
    as one lookup, one statement and one commit.
    """
    if not attrs:
        return
    import json

    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    model = models.TrialUserAttributeModel
    dialect = storage.engine.dialect.name
    with _create_scoped_session(storage.scoped_session, True) as session:
        if dialect not in ("postgresql", "sqlite"):
            for key, value in attrs.items():
                storage._set_trial_attr_without_commit(session, model, trial_id, key, value)
            return
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        storage.check_trial_is_updatable(trial_id, trial.state)   # UpdateFinishedTrialError, as Optuna raises
        from sqlalchemy.dialects import postgresql, sqlite

        insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
        upsert = insert(model).values(rows)
        session.execute(upsert.on_conflict_do_update(index_elements=[model.trial_id, model.key],
                                                     set_={"value_json": upsert.excluded.value_json}))


def enable_heartbeats(storage: Any, interval: float, grace_period: float) -> None:
    """Heartbeats as Optuna stores them; with ask/tell the coordinator records them itself."""
    storage.heartbeat_interval = max(1, int(round(interval)))
    storage.grace_period = max(2, int(round(grace_period)))


def stale_trial_ids(storage: Any, study_id: int, grace_period: float) -> list[int]:
    """RUNNING trials whose last heartbeat is older than the grace period (database clock), and RUNNING
    trials that never beat and started longer than the grace period ago.

    A sweeps coordinator asks for a trial and writes its first beat under the
    launch lock, so a trial without a beat found by the holder of that lock
    was asked by a process that died before beating, or by something other
    than a coordinator (a plain ``study.ask()``). Call this under the lock.
    """
    import datetime

    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    stale = list(storage._get_stale_trial_ids(study_id))
    trial, beat = models.TrialModel, models.TrialHeartbeatModel
    # Optuna 5 stores trial times as naive UTC; Optuna 4 in the writer's local time
    utc = hasattr(trial, "_datetime_start_utc")
    started = trial._datetime_start_utc if utc else trial.datetime_start
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) if utc else datetime.datetime.now()
    session: Any
    with _create_scoped_session(storage.scoped_session) as session:
        never_beat = (session.query(trial.trial_id, started)
                      .outerjoin(beat, beat.trial_id == trial.trial_id)
                      .filter(trial.study_id == study_id, trial.state == TrialState.RUNNING, beat.trial_id.is_(None))
                      .all())
    cutoff = now - datetime.timedelta(seconds=grace_period)
    return stale + [trial_id for trial_id, started in never_beat if started is not None and started < cutoff]


@contextmanager
def launch_lock(storage: Any, study_id: int) -> Iterator[None]:
    """Serialise "count, then ask" between coordinators sharing a study, so together they meet the budget exactly.

    PostgreSQL: a session advisory lock (freed by the server if the holder
    dies). SQLite: a lock file beside the database. Others: no lock.
    """
    engine = storage.engine
    if engine.dialect.name == "postgresql":
        from sqlalchemy import text

        key = _LOCK_BASE + study_id
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                except Exception:  # the connection died with its lock
                    pass
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        import fcntl

        with open(os.path.abspath(engine.url.database) + f".study{study_id}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:
        yield


_LOCK_BASE = 0x5357_0000   # "SW": keeps our advisory lock keys apart from other users of the database
