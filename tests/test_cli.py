"""The command line: help with examples, no TensorFlow for help, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli, write_space

COMMANDS = ["run", "resume", "status", "best", "ls"]


def test_help_is_fast_path_without_tensorflow_or_ray() -> None:
    code = ("import sys\nfrom sweeps.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'ray', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_ends_with_an_example(command: str | None) -> None:
    result = run_cli(*([command] if command else []), "--help", timeout=60)
    assert result.returncode == 0
    lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
    tail = "\n".join(lines[-4:])
    assert "example" in result.stdout.lower() and "sweeps " + (command or "") in tail


def test_unreachable_database_is_one_line_with_masked_password(tmp_path: Path) -> None:
    result = run_cli("ls", "--storage", "postgresql://me:s3cret-pw@127.0.0.1:1/nowhere", cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the database at postgresql://me:***@127.0.0.1:1/nowhere")
    assert "s3cret-pw" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_run_on_unreachable_database_stores_nothing_and_says_so(tmp_path: Path) -> None:
    space = write_space(tmp_path)
    result = run_cli("run", str(space), "--storage", "postgresql://me:pw@127.0.0.1:1/nowhere", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "cannot reach the database" in result.stderr
    assert "Traceback" not in result.stderr


def test_storage_from_environment(tmp_path: Path) -> None:
    result = run_cli("status", "x", cwd=tmp_path, timeout=60, SWEEPS_STORAGE=f"sqlite:///{tmp_path}/missing.db")
    assert result.returncode == 2 and "missing.db: no such database file" in result.stderr
    assert not (tmp_path / "missing.db").exists()


def test_empty_dataset_folder_fails_before_any_trial(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    space = write_space(tmp_path, dataset={"name": "folder", "path": "images"})
    result = run_cli("run", str(space), cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: dataset: dataset folder {tmp_path / 'images'} is empty; "
                                     "it needs one subfolder of images per class")
    assert not (tmp_path / "sweeps.db").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("--debug", "status", "x", "--storage", f"sqlite:///{tmp_path}/missing.db", cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_control_plane_modules_never_import_tensorflow() -> None:
    import subprocess
    import sys

    code = ("import sys, sweeps.api, sweeps.coordinator, sweeps.dashboard, sweeps.report, sweeps.summary; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
