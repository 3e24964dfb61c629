"""Models a user might bring (``model: tests/usermodels.py:NAME``), good and bad, for the tests."""

import keras


def build(params, input_shape, n_classes):
    """A small CNN with the user's own parameters ``filters`` and ``dense``."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(params["filters"], 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(params["dense"], activation="relu")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="user_cnn")


def logits(params, input_shape, n_classes):
    """Forgets the softmax."""
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(n_classes)(keras.layers.Flatten()(inputs)))


def broken(params, input_shape, n_classes):
    return keras.layers.Dense(params["no_such_parameter"])
