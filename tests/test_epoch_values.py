"""The value reported after each epoch is the weights' real validation value from epoch 1 (issue 15, item 0).

Real Keras on a few hundred images with BatchNorm and a few steps per epoch:
the moving statistics (momentum 0.9) lag the weights there, and Keras's own
validation read chance for the first epochs while the weights were already
good. The reference here is computed independently of ``workers/precise_bn.py``:
the same weights with every BatchNorm layer's statistics taken from the whole
training set as one batch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT
from workers import checkpoint as ckpt
from workers import data, models, precise_bn
from workers.hyperparameters import DEFAULTS as PARAMETER_DEFAULTS
from workers.spec import Decision, EpochReport, TrialSpec, TrialState
from workers.trainer import train_trial

PARAMS = {**PARAMETER_DEFAULTS, "width": 8, "learning_rate": 3e-3, "l2": 1e-3}


class Keep:
    def __init__(self) -> None:
        self.reports: list[EpochReport] = []

    def report(self, report: EpochReport) -> Decision:
        self.reports.append(report)
        return Decision.CONTINUE


def three_digits() -> data.Arrays:
    """scikit-learn's digits 0, 1 and 2 (537 images, 8x8): 429 to train, 7 steps of 64 per epoch."""
    whole = data.load({"name": "digits", "val_fraction": 0.2}, seed=0)
    train, val = whole.y_train < 3, whole.y_val < 3
    return data.Arrays(whole.x_train[train], whole.y_train[train], whole.x_val[val], whole.y_val[val], ("0", "1", "2"))


def fresh_statistics_model(arrays: data.Arrays, weights: list[np.ndarray]) -> object:
    """The model with ``weights`` and each BatchNorm layer's statistics those of the whole training set."""
    import keras

    model = models.build(PARAMS, arrays.input_shape, arrays.n_classes)
    model.set_weights(weights)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms
    for layer in norms:
        layer.momentum = 0.0
    model(arrays.x_train, training=True)        # one batch of every training image: its exact statistics
    return model


def accuracy(model: object, arrays: data.Arrays) -> float:
    predicted = np.argmax(model.predict(arrays.x_val, batch_size=256, verbose=0), axis=1)   # type: ignore[attr-defined]
    return float(np.mean(predicted == arrays.y_val))


def check_epoch_values(epochs: int = 3) -> list[tuple[float, float]]:
    """Trains on ``three_digits``; asserts the reported values' gap to the fresh statistics' (within 0.05 in
    epochs 1 and 2) and what the logs carry; returns (reported, fresh) per epoch."""
    arrays = three_digits()
    keep = Keep()
    result = train_trial(TrialSpec(number=0, params=PARAMS, epochs=epochs, seed=1), arrays, keep)
    assert result.state == TrialState.COMPLETE and [r.epoch for r in keep.reports] == list(range(1, epochs + 1))
    pairs = [(r.value, accuracy(fresh_statistics_model(arrays, ckpt.unpack(r.checkpoint).weights), arrays))
             for r in keep.reports if r.checkpoint]
    assert pairs[0][1] > 0.6, f"the weights are good after one epoch ({pairs}): else this test shows nothing"
    for epoch, (reported, fresh) in enumerate(pairs[:2], start=1):
        assert reported == pytest.approx(fresh, abs=0.05), f"epoch {epoch}: reported {reported}, fresh {fresh}"
    for report in keep.reports:
        logs = report.logs
        assert isinstance(logs["val_classes_predicted"], int) and 1 <= logs["val_classes_predicted"] <= 3
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "macro_f1"} <= set(logs)
        assert report.value == logs["val_accuracy"]
    return pairs


def test_reported_values_are_the_weights_values_from_the_first_epoch() -> None:
    check_epoch_values()


def test_logs_are_what_keras_evaluates_on_the_saved_weights() -> None:
    """val_loss (with the L2 penalty) and val_accuracy as ``model.evaluate`` gives them for the epoch's state,
    so a metric of val_loss means what it meant when Keras validated; the classes predicted counted."""
    arrays = three_digits()
    keep = Keep()
    train_trial(TrialSpec(number=0, params=PARAMS, epochs=1, seed=1, metric="val_loss", maximize=False), arrays, keep)
    (report,) = keep.reports
    model = models.build(PARAMS, arrays.input_shape, arrays.n_classes)
    model.set_weights(ckpt.unpack(report.checkpoint).weights if report.checkpoint else [])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    loss, acc = model.evaluate(arrays.x_val, arrays.y_val, batch_size=256, verbose=0)
    assert report.value == report.logs["val_loss"] == pytest.approx(loss, rel=1e-4)
    assert report.logs["val_accuracy"] == pytest.approx(acc, abs=1e-6)
    predicted = np.argmax(model.predict(arrays.x_val, batch_size=256, verbose=0), axis=1)
    assert report.logs["val_classes_predicted"] == np.unique(predicted).size


def test_recalibration_leaves_weights_optimizer_and_frozen_layers_alone() -> None:
    import keras

    arrays = three_digits()
    model = models.build(PARAMS, arrays.input_shape, arrays.n_classes)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(arrays.x_train, arrays.y_train, batch_size=64, epochs=1, verbose=0)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    norms[0].trainable = False                                  # as a frozen backbone's BatchNorm
    momenta = [layer.momentum for layer in norms]
    numpy = keras.ops.convert_to_numpy
    before = {v.path: numpy(v) for v in model.variables}
    optimizer = [numpy(v) for v in model.optimizer.variables]
    assert precise_bn.recalibrate(model, arrays.x_train[:128], 64) == len(norms) - 1
    after = {v.path: numpy(v) for v in model.variables}
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    moving = {v.path for layer in norms[1:] for v in (layer.moving_mean, layer.moving_variance)}
    assert changed == moving and [layer.momentum for layer in norms] == momenta
    assert all(np.array_equal(a, numpy(b)) for a, b in zip(optimizer, model.optimizer.variables))
    assert [precise_bn.images(n) for n in (40, 429, 1000, 5000)] == [40, 128, 250, 512]
    assert [precise_bn.sample(n, 64, seed=1).size for n in (40, 429, 1000, 5000)] == [40, 128, 192, 512]
    assert precise_bn.sample(429, 256, seed=1).size == 128         # one batch, smaller than training's


JAX_CHECK = """
import sys
sys.path.insert(0, {root!r})
import keras
assert keras.backend.backend() == "jax"
from tests.test_epoch_values import check_epoch_values
pairs = check_epoch_values(epochs=2)
print(pairs)
"""


def test_the_same_under_the_jax_backend() -> None:
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", JAX_CHECK.format(root=str(ROOT))], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
