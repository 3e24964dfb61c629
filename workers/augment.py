"""Augmentation strength (0..1) -> Keras preprocessing layers.

The layers sit at the front of the model, so they act only in training and
never at evaluation. Strength 1 is the strongest we consider sensible for
small images; 0 adds no layer at all.
"""

from __future__ import annotations

from typing import Any

# Full-strength settings. RandomRotation takes a fraction of a full turn:
# 0.05 is +-18 degrees.
ROTATION = 0.05
ZOOM = 0.2
TRANSLATION = 0.15
CONTRAST = 0.4


def layers(strength: float, flip: bool, seed: int | None = None) -> list[Any]:
    import keras

    if strength <= 0:
        return []
    s = float(strength)
    out = [
        keras.layers.RandomRotation(ROTATION * s, fill_mode="constant", seed=seed),
        keras.layers.RandomZoom(ZOOM * s, fill_mode="constant", seed=seed),
        keras.layers.RandomTranslation(TRANSLATION * s, TRANSLATION * s, fill_mode="constant", seed=seed),
        keras.layers.RandomContrast(CONTRAST * s, value_range=(0.0, 1.0), seed=seed),
    ]
    if flip:
        out.insert(0, keras.layers.RandomFlip("horizontal", seed=seed))
    return out
