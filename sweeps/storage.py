"""Storage URL -> Optuna storage, with secrets never printed.

Only the control plane calls this (DESIGN principle 1): workers never see a
URL. Connection problems become one line that names the (masked) URL and
the fix.
"""

from __future__ import annotations

import os
import re
from typing import Any

from sweeps.errors import SweepsError

DEFAULT_URL = "sqlite:///sweeps.db"
ENV_VAR = "SWEEPS_STORAGE"
APPLICATION_NAME = "sweeps-coordinator"

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@]*:)(?P<pw>[^@/?#]*)(?P<tail>@)")


def resolve_url(url: str | None) -> str:
    """--storage, else $SWEEPS_STORAGE, else the SQLite file sweeps.db here."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def mask(text: str) -> str:
    """Replace every password in URLs within ``text`` by ***."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)


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
        engine_kwargs["connect_args"] = {"connect_timeout": 10, "application_name": APPLICATION_NAME}
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
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_compatibility_check=False)
    except sqlalchemy.exc.OperationalError as e:
        reason = mask(str(e.orig).strip().splitlines()[0]) if e.orig else "connection failed"
        raise SweepsError(
            f"cannot reach the database at {shown}: {reason}; check that the server runs and the URL "
            f"is right, or leave out --storage to use {DEFAULT_URL}"
        ) from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as e:
        raise SweepsError(f"storage {shown}: {mask(str(e).splitlines()[0])}; use sqlite:///FILE or postgresql://user:password@host/db") from None
    except ImportError as e:
        raise SweepsError(f"storage {shown}: its database driver is not installed ({e.__cause__ or e}); "
                          "use postgresql:// (psycopg2) or sqlite:///") from None
    except RuntimeError as e:  # schema from another Optuna version
        raise SweepsError(f"storage {shown}: {mask(str(e).splitlines()[0])}") from None
