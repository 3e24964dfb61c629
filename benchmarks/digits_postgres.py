"""Issue 2's acceptance run: the digits demo on PostgreSQL, 12 trials, 2 in parallel.

    .venv/bin/python benchmarks/digits_postgres.py

Creates a fresh database (through SWEEPS_TEST_PG_ADMIN, default the local
trust-auth server), runs `sweeps run search_spaces/digits.yaml --storage ...
--n-trials 12 --parallel 2` as a user would, prints the wall time, trials by
state and the best value as a Markdown table row, and drops the database.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import optuna
from pgdb import fresh_database

from sweeps.storage import driver_url

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with fresh_database() as url:
        command = ["sweeps", "run", "search_spaces/digits.yaml", "--storage", url, "--n-trials", "12",
                   "--parallel", "2"]
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "sweeps.cli", *command[1:]], cwd=ROOT, check=True)
        wall = time.monotonic() - started
        study = optuna.load_study(study_name="digits-demo", storage=driver_url(url))
        states = {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
        print(f"| {datetime.date.today()} | {platform.node()}, {os.cpu_count()} cores | `{' '.join(command)}` "
              f"| {wall:.0f} s | {study.best_value:.4f} | {states['COMPLETE']} complete, {states['PRUNED']} pruned, "
              f"{states['FAIL']} failed |")


if __name__ == "__main__":
    main()
