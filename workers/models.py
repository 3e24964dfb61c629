"""Architecture registry: name -> builder(params, input_shape, n_classes).

BatchNorm uses momentum 0.9: with Keras's default 0.99 and the few steps per
epoch of small datasets, validation accuracy lags the real one for several
epochs and the pruner kills good trials (measured, ../shared/STACK.md).
"""

from __future__ import annotations

from typing import Any, Callable

BN_MOMENTUM = 0.9


def _regularizer(params: dict[str, Any]) -> Any:
    import keras

    return keras.regularizers.L2(params["l2"]) if params["l2"] > 0 else None


def _conv_bn_relu(x: Any, filters: int, params: dict[str, Any], strides: int = 1) -> Any:
    import keras

    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=not params["batchnorm"],
                            kernel_regularizer=_regularizer(params))(x)
    x = _norm(x, params)
    return keras.layers.Activation("relu")(x)


def _norm(x: Any, params: dict[str, Any]) -> Any:
    """BatchNorm, or nothing when the trial turns it off (the convolutions then carry a bias)."""
    import keras

    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x) if params["batchnorm"] else x


def simple_cnn(params: dict[str, Any], x: Any, input_shape: tuple[int, ...]) -> Any:
    """``depth`` VGG-style blocks (two conv-BN-ReLU), widths doubling; max-pool while the image is at least 4 px."""
    import keras

    size = min(input_shape[:2])
    for i in range(params["depth"]):
        x = _conv_bn_relu(x, params["width"] * 2 ** i, params)
        x = _conv_bn_relu(x, params["width"] * 2 ** i, params)
        if size >= 4:
            x = keras.layers.MaxPooling2D(2)(x)
            size //= 2
    return x


def resnet(params: dict[str, Any], x: Any, input_shape: tuple[int, ...]) -> Any:
    """Stem, then three stages of ``depth`` residual blocks; each later stage halves the size where it can."""
    import keras

    width = params["width"]
    x = _conv_bn_relu(x, width, params)
    size = min(input_shape[:2])
    for stage in range(3):
        filters = width * 2 ** stage
        for block in range(params["depth"]):
            strides = 2 if stage > 0 and block == 0 and size >= 4 else 1
            if strides == 2:
                size //= 2
            shortcut = x
            y = _conv_bn_relu(x, filters, params, strides)
            y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not params["batchnorm"],
                                    kernel_regularizer=_regularizer(params))(y)
            y = _norm(y, params)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=not params["batchnorm"],
                                               kernel_regularizer=_regularizer(params))(shortcut)
                shortcut = _norm(shortcut, params)
            x = keras.layers.Activation("relu")(keras.layers.Add()([y, shortcut]))
    return x


ARCHITECTURES: dict[str, Callable[..., Any]] = {"simple_cnn": simple_cnn, "resnet": resnet}


def build(params: dict[str, Any], input_shape: tuple[int, ...], n_classes: int,
          augmentation: list[Any] | None = None) -> Any:
    """A compiled-ready Keras model: augmentation, the body, then pooling, dropout and a softmax head."""
    import keras

    inputs = keras.Input(shape=input_shape)
    x = inputs
    for layer in augmentation or []:
        x = layer(x)
    x = ARCHITECTURES[params["architecture"]](params, x, input_shape)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if params["dropout"] > 0:
        x = keras.layers.Dropout(params["dropout"])(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=_regularizer(params))(x)
    return keras.Model(inputs, outputs, name=params["architecture"])
