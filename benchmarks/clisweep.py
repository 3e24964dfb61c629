"""`sweeps run` as a user runs it, for the benchmarks that time whole sweeps: a YAML in a temporary
folder, an SQLite study there, checkpoints there too (XDG_DATA_HOME), and the study's trials read back."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml


def run(space: dict[str, Any], watch: Callable[[subprocess.Popen[bytes]], None] | None = None,
        ) -> tuple[float, list[optuna.trial.FrozenTrial]]:
    """One sweep of ``space`` (which names its study); its wall time and trials. ``watch`` is called with
    the CLI's process every 0.25 s while it runs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(yaml.safe_dump(space))
        url = f"sqlite:///{tmp}/sweeps.db"
        with open(Path(tmp) / "stderr.txt", "wb") as err:
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "run", str(path), "--storage", url,
                                     "--quiet"], cwd=tmp, stdout=subprocess.DEVNULL, stderr=err,
                                    env={**os.environ, "XDG_DATA_HOME": tmp})
            while proc.poll() is None:
                if watch is not None:
                    watch(proc)
                time.sleep(0.25)
            wall = time.monotonic() - started
        if proc.returncode != 0:
            last = (Path(tmp) / "stderr.txt").read_text(errors="replace").strip().splitlines()[-1:]
            raise SystemExit(f"sweeps run exited {proc.returncode}: {last}")
        return wall, optuna.load_study(study_name=space["study"], storage=url).get_trials()
