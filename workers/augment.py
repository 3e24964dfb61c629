"""Augmentation strength (0..1) -> Keras preprocessing layers.

The layers sit at the front of the model, so they act only in training and
never at evaluation. Strength 1 is the strongest we consider sensible for
small images; 0 adds no layer at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Full-strength settings. RandomRotation takes a fraction of a full turn:
# 0.05 is +-18 degrees.
ROTATION = 0.05
ZOOM = 0.2
TRANSLATION = 0.15
CONTRAST = 0.4
BRIGHTNESS = 0.2


def layers(strength: float, flip: bool, seed: int | None = None, erasing: float = 0.0) -> list[Any]:
    """``erasing``: the probability that random erasing blanks a patch (2-25% of the image) of each image."""
    import keras

    out: list[Any] = []
    if strength > 0:
        s = float(strength)
        out = [
            keras.layers.RandomRotation(ROTATION * s, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom(ZOOM * s, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(TRANSLATION * s, TRANSLATION * s, fill_mode="constant", seed=seed),
            keras.layers.RandomContrast(CONTRAST * s, value_range=(0.0, 1.0), seed=seed),
            keras.layers.RandomBrightness(BRIGHTNESS * s, value_range=(0.0, 1.0), seed=seed),
        ]
        if flip:
            out.insert(0, keras.layers.RandomFlip("horizontal", seed=seed))
    if erasing > 0:
        out.append(keras.layers.RandomErasing(factor=float(erasing), scale=(0.02, 0.25), fill_value=0.0,
                                              value_range=(0.0, 1.0), seed=seed))
    if keras.backend.backend() == "jax":
        # Keras marks the affine layers not XLA-safe because of TensorFlow's transform op; JAX's
        # affine_transform traces fine, and a JAX model that is not jitted trains ~50x slower.
        for layer in out:
            layer.supports_jit = True
    return out


def mixup(images: Any, labels: Any, alpha: float) -> tuple[Any, Any]:
    """Mixup on one batch (one-hot labels): each example blended with another of the batch, weight ~ Beta(a, a)."""
    import tensorflow as tf

    a = tf.random.gamma([], alpha)
    b = tf.random.gamma([], alpha)
    weight = a / (a + b)
    order = tf.random.shuffle(tf.range(tf.shape(images)[0]))
    mixed_images = weight * images + (1.0 - weight) * tf.gather(images, order)
    mixed_labels = weight * labels + (1.0 - weight) * tf.gather(labels, order)
    return mixed_images, mixed_labels


def mixup_arrays(images: np.ndarray, labels: np.ndarray, alpha: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``mixup`` in NumPy, for backends without TensorFlow: one Beta(alpha, alpha) weight per batch."""
    weight = rng.beta(alpha, alpha)
    order = rng.permutation(len(images))
    mixed_images = (weight * images + (1.0 - weight) * images[order]).astype(images.dtype)
    mixed_labels = (weight * labels + (1.0 - weight) * labels[order]).astype(labels.dtype)
    return mixed_images, mixed_labels
