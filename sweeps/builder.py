"""``model:`` in the YAML: the user's model builder, read and checked once before the study is written.

``package.module:function`` is imported where trials run; ``file.py:function``
(relative to the YAML) is read here and its source stored with the sweep's
config, so every worker, every later ``resume`` and every export builds the
same model without a copy of the file. The check builds the model on the
dataset's shape in a process of its own (``python -m workers.usermodel``), so
the coordinator never imports Keras.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from sweeps.errors import SweepsError
from workers.hyperparameters import DEFAULTS
from workers.spec import ModelBuilder

if TYPE_CHECKING:
    from sweeps.config import SweepConfig
    from sweeps.validation import Checks

ENTRY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|.+\.py):(?P<function>[A-Za-z_]\w*)$")
BUILT_IN_ONLY = ("architecture",)     # parameters that choose among the built-in models


def model_section(c: Checks, raw: Any) -> ModelBuilder | None:
    """A string as the user writes it, or the mapping a stored config holds."""
    if raw is None:
        return None
    if isinstance(raw, dict):              # stored: {entry, source, file}
        c.unknown_keys("model", raw, {"entry", "source", "file"})
        if not isinstance(raw.get("entry"), str):
            c.fail("model.entry", "must be module:function")
        return ModelBuilder(raw["entry"], raw.get("source"), raw.get("file"))
    match = ENTRY.match(raw.strip()) if isinstance(raw, str) else None
    if match is None:
        c.fail("model", f"must be package.module:function or file.py:function, got {raw!r}")
    module, function = match["module"], match["function"]
    if not module.endswith(".py"):
        return ModelBuilder(f"{module}:{function}")
    path = os.path.normpath(os.path.join(c.base_dir or os.getcwd(), os.path.expanduser(module)))
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except OSError as e:
        c.fail("model", f"cannot read {path} ({e.strerror}); give a .py file relative to the YAML")
    stem = os.path.splitext(os.path.basename(path))[0]
    if not stem.isidentifier():
        c.fail("model", f"{os.path.basename(path)}: the file's name must be a Python module name (letters, digits, _)")
    return ModelBuilder(f"{stem}:{function}", source, path)


def to_dict(builder: ModelBuilder | None) -> dict[str, Any] | None:
    if builder is None:
        return None
    return {"entry": builder.entry, "source": builder.source, "file": builder.file}


def first_params(config: SweepConfig) -> dict[str, Any]:
    """Each parameter's fixed value, first choice or low end, over the defaults: what the check builds."""
    params = dict(DEFAULTS)
    for p in config.parameters.values():
        params[p.name] = p.value if p.fixed else (p.values[0] if p.values is not None else p.low)
    return params


def check(config: SweepConfig, input_shape: tuple[int, ...], n_classes: int) -> dict[str, int]:
    """Build the user's model once, under the sweep's Keras backend; one clear line when it cannot be built.
    Returns its parameter count and weight bytes."""
    assert config.model is not None
    job = {"builder": to_dict(config.model), "params": first_params(config), "input_shape": list(input_shape),
           "n_classes": n_classes}
    env = dict(os.environ, KERAS_BACKEND=config.backend, TF_CPP_MIN_LOG_LEVEL="3")
    if config.model.source is None:          # an installed module: importable from where the user stands too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", "workers.usermodel"], input=json.dumps(job), env=env,
                          capture_output=True, text=True, timeout=600)
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SweepsError(f"model {config.model.entry}: the check could not run ({tail[:300]})") from None
    if "error" in answer:
        raise SweepsError(answer["error"])
    return dict(answer["sizes"])
