"""Your own Keras model in a sweep: the builder that search_spaces/custom_model.yaml names.

    model: custom_model.py:build

sweeps calls ``build(params, input_shape, n_classes)`` for every trial, with
``params`` holding every parameter of the YAML (yours, such as ``filters``
and ``kernel``, and the trainer's, such as ``learning_rate``, with their
defaults filled in). Return a Keras model whose output is ``n_classes``
probabilities; sweeps adds augmentation in front of it, compiles it with
the trial's optimizer and trains it. This file is read when the sweep starts
and stored with the study, so workers and later resumes need no copy.
"""

import keras


def build(params, input_shape, n_classes):
    inputs = keras.Input(shape=input_shape)
    x = inputs
    size = min(input_shape[:2])
    for block in range(params["blocks"]):
        filters = params["filters"] * 2 ** block
        x = keras.layers.Conv2D(filters, params["kernel"], padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.Activation("relu")(x)
        if size >= 4:
            x = keras.layers.MaxPooling2D(2)(x)
            size //= 2
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(params["dropout"])(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="custom_cnn")
