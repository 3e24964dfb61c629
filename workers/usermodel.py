"""A user's own model: the builder named by ``model:`` in the YAML, found and called the same way everywhere.

``model: package.module:function`` imports an installed package (it must be
installed on every node); ``model: file.py:function`` names a file beside the
YAML, whose source travels inside each trial's spec, so workers need no copy
of it. The function takes ``(params, input_shape, n_classes)`` and returns a
Keras model (compiled or not: the trainer compiles it) whose output is
``n_classes`` probabilities.

``python -m workers.usermodel`` runs the control plane's check in its own
process (JSON in, JSON out), so the coordinator never imports Keras.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from workers.spec import ModelBuilder

_FILE_MODULES: dict[str, types.ModuleType] = {}     # source digest -> its module, once per process


class BuilderError(ValueError):
    """The builder cannot be found, or cannot build a usable model."""


def function(builder: ModelBuilder) -> Callable[..., Any]:
    """The builder's function: from the shipped source of a file, or imported from an installed module."""
    module_name, _, name = builder.entry.rpartition(":")
    if builder.source is not None:
        module = _file_module(module_name, builder.source, builder.file or f"<{module_name}.py>")
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception as e:
            raise BuilderError(f"model {builder.entry}: cannot import {module_name} ({_first_line(e)}); install the "
                               "package on every machine that runs trials, or name a file: model: file.py:function"
                               ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise BuilderError(f"model {builder.entry}: {module_name} has no function {name!r}")
    return fn


def _file_module(module_name: str, source: str, filename: str) -> types.ModuleType:
    digest = hashlib.sha256(source.encode()).hexdigest()
    if digest not in _FILE_MODULES:
        module = types.ModuleType(module_name)
        module.__file__ = filename
        sys.modules[module_name] = module        # pickling and Keras serialisation look classes up by module
        try:
            exec(compile(source, filename, "exec"), module.__dict__)   # noqa: S102 - the user's own model file
        except Exception as e:
            raise BuilderError(f"model {os.path.basename(filename)}: the file fails when run: "
                               f"{_first_line(e)}") from None
        _FILE_MODULES[digest] = module
    return _FILE_MODULES[digest]


def build(builder: ModelBuilder, params: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> Any:
    """Call the builder; anything it raises or returns wrongly becomes one ``BuilderError`` line."""
    import keras

    fn = function(builder)
    try:
        model = fn(dict(params), tuple(input_shape), int(n_classes))
    except Exception as e:
        raise BuilderError(f"model {builder.entry} failed on input shape {tuple(input_shape)} with {n_classes} "
                           f"classes: {_first_line(e)}") from None
    if not isinstance(model, keras.Model):
        raise BuilderError(f"model {builder.entry} returned {type(model).__name__}, not a keras.Model")
    shape = tuple(model.output_shape) if not isinstance(model.output_shape, list) else None
    if shape is None or len(shape) != 2 or shape[-1] != n_classes:
        raise BuilderError(f"model {builder.entry} outputs shape {model.output_shape}; it must output "
                           f"(batch, {n_classes}) class probabilities, e.g. Dense({n_classes}, activation='softmax')")
    return model


def check(builder: ModelBuilder, params: dict[str, Any], input_shape: tuple[int, ...],
          n_classes: int) -> dict[str, Any]:
    """Build once and run two images through: the output must be probabilities. Returns the model's size."""
    model = build(builder, params, input_shape, n_classes)
    out = np.asarray(model(np.random.default_rng(0).random((2, *input_shape), dtype=np.float32), training=False))
    if not np.all(np.isfinite(out)) or np.any(out < -1e-6) or not np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        raise BuilderError(f"model {builder.entry} does not output probabilities (its outputs do not sum to 1 per "
                           f"image); end it with Dense({n_classes}, activation='softmax')")
    return sizes(model)


def sizes(model: Any) -> dict[str, int]:
    """What a model costs to serve before it is trained: parameters, and bytes of its weights as trained."""
    return {"param_count": int(model.count_params()),
            "model_bytes": int(sum(int(np.prod(w.shape)) * _itemsize(w) for w in model.weights))}


def _itemsize(weight: Any) -> int:
    return int(np.dtype(str(getattr(weight, "dtype", "float32"))).itemsize)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def main() -> None:
    """JSON on stdin ({builder, params, input_shape, n_classes}) -> JSON on stdout ({sizes} or {error})."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    job = json.load(sys.stdin)
    builder = ModelBuilder(**job["builder"])
    try:
        out: dict[str, Any] = {"sizes": check(builder, job["params"], tuple(job["input_shape"]), job["n_classes"])}
    except BuilderError as e:
        out = {"error": str(e)}
    except ImportError as e:            # Keras itself: the machine that starts a sweep builds the model once
        out = {"error": f"model {builder.entry}: checking it needs Keras on this machine ({e}); "
                        "pip install -e '.[tf]' (or '.[jax]')"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
