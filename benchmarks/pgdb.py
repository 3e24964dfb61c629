"""A throwaway PostgreSQL database per benchmark run, so runs never see each other's studies.

Made through SWEEPS_TEST_PG_ADMIN (default: the local trust-auth server, as the tests use) and dropped
when the run ends, however it ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy

from sweeps.storage import driver_url

ADMIN = os.environ.get("SWEEPS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def fresh_database(prefix: str = "sweeps_bench") -> Iterator[str]:
    """Yield the URL of a new empty database; drop it (closing its connections) on the way out."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(driver_url(ADMIN), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
