"""Precise BatchNorm: moving statistics re-estimated on training images before each epoch's validation.

Why: a BatchNorm layer infers with moving averages of its batch statistics.
With few steps per epoch (600 images, batch 64: 8 steps) those averages lag
the weights, and for the first epochs validation reads chance while the
weights are already good (../shared/STACK.md); a pruner acting on that
chooses at random. Re-estimating them from a forward pass over some training
images (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021) makes the
reported value that of the weights, whatever the dataset size, steps per
epoch or BatchNorm momentum (a user's model keeps its own).

Rule (measured: benchmarks/bn_truth.py, benchmarks/RESULTS.md, issue 15):
every epoch, before validation, over a fixed, seeded sample of a quarter of
the training images, at least 128 and at most 512 (all of them below 128),
in whole batches of the training batch size. 128 images were within 1 point
of statistics from the whole training set (3 classes) and 512 within 0.3
(MNIST-5k, 10 classes). Forward passes only: 0.09 s of a 0.9 s epoch on 480
images, 0.24 s (4 %) of an MNIST-5k epoch, and no more than 512 images'
worth on larger data. It is never skipped: with 63 steps an epoch
(MNIST-5k) the moving averages still read 25 points low after epoch 1 and
3-4 points low after epochs 2-3.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

MIN_IMAGES, MAX_IMAGES, SHARE = 128, 512, 4     # the rule above; both 0 turns it off (the benchmark compares)


def images(n: int) -> int:
    """How many of ``n`` training images a re-estimate uses: n / SHARE within [MIN_IMAGES, MAX_IMAGES]."""
    return min(n, max(MIN_IMAGES, min(MAX_IMAGES, n // SHARE)))


def trainable_batchnorms(model: Any) -> list[Any]:
    """The BatchNormalization layers that train: those of a frozen backbone (or frozen in fine-tuning) run in
    inference mode and keep their statistics."""
    return list(_walk(model, model.trainable))


def _walk(layer: Any, trainable: bool) -> Iterator[Any]:
    import keras

    for sub in layer._flatten_layers(include_self=False, recursive=False):
        on = trainable and sub.trainable
        if isinstance(sub, keras.layers.BatchNormalization):
            if on and not getattr(sub, "renorm", False):     # renorm keeps statistics of its own kind
                yield sub
        else:
            yield from _walk(sub, on)


def sample(n: int, batch_size: int, seed: int) -> np.ndarray:
    """Which training images a re-estimate uses (``images``): a seeded sample cut to whole batches of
    ``batch_size`` (at least one), the same every epoch."""
    size = images(n)
    if size <= 0:
        return np.zeros(0, dtype="int64")
    batch = max(1, min(batch_size, size))
    size = max(batch, size // batch * batch)
    return np.sort(np.random.default_rng(seed).permutation(n)[:size])


class Recalibrator:
    """Sets every trainable BatchNorm layer's moving mean and variance to the average of its batch statistics
    over some training images: forward passes in training mode, compiled once per fit phase.

    Only the moving statistics change: no weight, no optimizer state. Each
    layer's momentum is 0 during the passes (so its moving values are the last
    batch's statistics, read and averaged here, weighted by batch size) and
    put back after. Training mode normalises with each batch's own statistics,
    so one pass sets every layer from the activations training produces.
    Build one after the model's trainable flags are set (``models.set_phase``):
    the compiled pass keeps the layers' modes of that moment.
    """

    def __init__(self, model: Any, batch_size: int) -> None:
        self.layers = trainable_batchnorms(model)
        self.batch_size = max(1, batch_size)
        self.forward = _compiled_forward(model) if self.layers else None

    def __call__(self, images: np.ndarray) -> int:
        """Re-estimates the statistics from ``images``; returns the layers set (0: none to set)."""
        import keras

        if self.forward is None or not len(images):
            return 0
        momenta = [layer.momentum for layer in self.layers]
        means = [np.zeros(layer.moving_mean.shape, "float64") for layer in self.layers]
        variances = [np.zeros(layer.moving_variance.shape, "float64") for layer in self.layers]
        try:
            for layer in self.layers:
                layer.momentum = 0.0
            for start in range(0, len(images), self.batch_size):
                part = images[start:start + self.batch_size]
                self.forward(part)
                for layer, mean, variance in zip(self.layers, means, variances):
                    mean += len(part) * keras.ops.convert_to_numpy(layer.moving_mean).astype("float64")
                    variance += len(part) * keras.ops.convert_to_numpy(layer.moving_variance).astype("float64")
        finally:
            for layer, momentum in zip(self.layers, momenta):
                layer.momentum = momentum
        for layer, mean, variance in zip(self.layers, means, variances):
            layer.moving_mean.assign(mean / len(images))
            layer.moving_variance.assign(variance / len(images))
        return len(self.layers)


def recalibrate(model: Any, images: np.ndarray, batch_size: int) -> int:
    """One re-estimate (``Recalibrator``) of ``model``'s trainable BatchNorm statistics from ``images``."""
    return Recalibrator(model, batch_size)(images)


def _compiled_forward(model: Any) -> Any:
    """``model(x, training=True)`` compiled: a tf.function, or under JAX a jitted stateless call whose new
    non-trainable values (the moving statistics, the augmentation's seed state) are written back.
    Eager passes cost two to three times as much (measured on MNIST-5k, both backends)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x: model(x, training=True), reduce_retracing=True)
    if keras.backend.backend() != "jax":
        return lambda x: model(x, training=True)
    import jax

    trainable, fixed = model.trainable_variables, model.non_trainable_variables

    @jax.jit
    def step(trainable_values: list[Any], fixed_values: list[Any], x: Any) -> list[Any]:
        return model.stateless_call(trainable_values, fixed_values, x, training=True)[1]

    def forward(x: np.ndarray) -> None:
        for variable, value in zip(fixed, step([v.value for v in trainable], [v.value for v in fixed], x)):
            variable.assign(value)

    return forward
