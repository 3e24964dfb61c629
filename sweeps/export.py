"""Best trial -> a model to serve: ``.keras``, a SavedModel in TensorFlow Serving's layout, or TFLite.

``backbone`` writes only the keras.applications backbone's weights
(``.weights.h5``): the file another sweep's ``weights:`` starts from.

The weights come from the best trial's kept checkpoint (its best epoch), or,
when none was kept, from retraining its parameters with its seed. The
exported model takes float32 images scaled to [0, 1], shaped like the
dataset's images, and returns class probabilities; augmentation is left out.
Each export is checked on the held-out validation images against the
original model, so a quantised model that lost accuracy is flagged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeps.errors import SweepsError
from workers import data as datasets

FORMATS = ("keras", "saved_model", "tflite", "backbone")   # backbone: weights: FILE for transfer learning
QUANTIZE = ("none", "float16", "int8")
FLAG_DROP = 0.01      # a quantised model more than 1 point below the original is flagged


@dataclass
class Exported:
    path: str
    format: str
    quantize: str
    size_bytes: int
    trial: int
    source: str                    # "checkpoint" or "retrained"
    accuracy_original: float
    accuracy_exported: float
    flagged: bool
    attached: bool = False         # recorded as a study artifact (single files only)
    members: tuple[int, ...] = ()  # an ensemble's runs (finalists.ensemble), averaged in the one exported model

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def export_best(study_name: str, storage_url: str | None, *, fmt: str, out: str, quantize: str = "none",
                trial: int | None = None, say: Callable[[str], None] = lambda line: None) -> Exported:
    """The best trial's model (or trial ``trial``'s, e.g. a Pareto front member) in ``fmt``, checked."""
    if fmt not in FORMATS:
        raise SweepsError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quantize not in QUANTIZE:
        raise SweepsError(f"unknown quantisation {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    if quantize != "none" and fmt != "tflite":
        raise SweepsError("--quantize applies to --format tflite only")
    from sweeps.trained import load_trained  # also quiets TensorFlow before it is imported

    t = load_trained(study_name, storage_url, trial, say=say)
    study, config, best, data, model, source = t.study, t.config, t.trial, t.data, t.model, t.source

    import keras

    original = _accuracy(lambda x: model.predict(x, batch_size=256, verbose=0), data)

    os.makedirs(out, exist_ok=True)
    name = _safe(study_name) + ("" if trial is None else f"-trial{best.number}")
    what = f"the average of trials {', '.join(map(str, t.members))}" if t.members else f"trial {best.number}"
    say(f"exporting {what} as {fmt}" + (f" ({quantize})" if quantize != "none" else ""))
    if fmt == "backbone" and t.members:
        raise SweepsError(f"the handed-over model averages trials {', '.join(map(str, t.members))}; --format backbone "
                          f"exports one trial's backbone: add --trial {best.number}")
    if fmt == "backbone":
        from workers.models import backbone

        base = backbone(model)
        if base is None:
            raise SweepsError(f"trial {best.number} is a {best.params.get('architecture', 'simple_cnn')}, which has no "
                              "pretrainable backbone; --format backbone needs mobilenet_v2 or efficientnet_b0")
        path = _inside(out, os.path.join(out, f"{name}-{base.name}.weights.h5"))
        base.save_weights(path)
        exported, size = original, os.path.getsize(path)      # the head is not in the file: nothing to compare
    elif fmt == "keras":
        path = _inside(out, os.path.join(out, f"{name}.keras"))
        model.save(path)
        exported = _accuracy(lambda x: keras.models.load_model(path).predict(x, batch_size=256, verbose=0), data)
        size = os.path.getsize(path)
    elif fmt == "saved_model":
        path = _inside(out, os.path.join(out, name, "1"))         # TensorFlow Serving: MODEL/VERSION/
        if os.path.exists(path):
            shutil.rmtree(path)
        model.export(path, format="tf_saved_model", verbose=False)
        exported = _accuracy(_saved_model_predict(path), data)
        size = _tree_size(path)
    else:
        path = _inside(out, os.path.join(out, f"{name}{'' if quantize == 'none' else '-' + quantize}.tflite"))
        with open(path, "wb") as f:
            f.write(_tflite(model, quantize, data))
        exported = _accuracy(tflite_predict(path), data)
        size = os.path.getsize(path)
    flagged = quantize != "none" and exported < original - FLAG_DROP
    attached = _attach(study, config, path)
    if attached:
        say(f"attached {os.path.basename(path)} to the study: optuna-dashboard lists it under the study's artifacts")
    return Exported(path, fmt, quantize, size, best.number, source, original, exported, flagged, attached, t.members)


def _attach(study: Any, config: Any, path: str) -> bool:
    """Record a single-file export as a study artifact (the best model file, in the dashboard)."""
    from optuna.artifacts import upload_artifact

    from sweeps.dashboard import artifact_store

    store = artifact_store(config.checkpoint_store)
    if store is None or not os.path.isfile(path):
        return False
    upload_artifact(study_or_trial=study, file_path=path, artifact_store=store,
                    mimetype="application/octet-stream")
    return True


def _safe(name: str) -> str:
    """A file name from a study name: letters, digits, '-', '_' and '.', never a leading dot ('.' or '..')."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return "_" + safe if safe.startswith(".") or not safe else safe


def _inside(out: str, path: str) -> str:
    """``path``, after checking that it lies under ``out`` (nothing is written or removed elsewhere)."""
    root, target = os.path.realpath(out), os.path.realpath(path)
    if os.path.commonpath([root, target]) != root:
        raise SweepsError(f"refusing to write {path}: it is outside --out {out}")
    return path


def _accuracy(predict: Callable[[np.ndarray], np.ndarray], data: datasets.Arrays) -> float:
    probabilities = predict(data.x_val.astype(np.float32))
    return float(np.mean(np.argmax(probabilities, axis=1) == data.y_val))


def _saved_model_predict(path: str) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    return lambda x: np.concatenate([loaded.serve(tf.constant(x[i:i + 256])).numpy() for i in range(0, len(x), 256)])


def _tree_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _tflite(model: Any, quantize: str, data: datasets.Arrays) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            # Full integer quantisation: weights and activations int8, calibrated on training images;
            # the model still takes and returns float32, so callers need no scale/zero-point.
            sample = data.x_train[np.random.default_rng(0).permutation(len(data.x_train))[:200]].astype(np.float32)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([sample[i:i + 1]] for i in range(len(sample)))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        from sweeps.trained import native_quiet

        with native_quiet():
            return converter.convert()


def tflite_predict(path: str) -> Callable[[np.ndarray], np.ndarray]:
    """Run a .tflite file with the TFLite interpreter, one image at a time."""
    import tensorflow as tf

    from sweeps.trained import native_quiet

    with native_quiet():
        interpreter = tf.lite.Interpreter(model_path=path)
        interpreter.allocate_tensors()
        inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
        interpreter.invoke()              # the delegate says hello on the first run

    def predict(x: np.ndarray) -> np.ndarray:
        out = []
        for image in x:
            interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
            interpreter.invoke()
            out.append(interpreter.get_tensor(outp["index"])[0])
        return np.asarray(out)

    return predict
