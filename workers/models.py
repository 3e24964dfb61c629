"""Architecture registry: name -> builder(params, input_shape, n_classes).

BatchNorm uses momentum 0.9: with Keras's default 0.99 and the few steps per
epoch of small datasets, validation accuracy lags the real one for several
epochs and the pruner kills good trials (measured, ../shared/STACK.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workers import usermodel
from workers.spec import ModelBuilder

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


# keras.applications backbones: (constructor name, smallest input side, input scaling of [0, 1] images).
# Inputs are resized up to the smallest side the backbone takes; MobileNetV2 wants [-1, 1], EfficientNet
# rescales [0, 255] itself.
APPLICATIONS = {
    "mobilenet_v2": ("MobileNetV2", 32, (2.0, -1.0)),
    "efficientnet_b0": ("EfficientNetB0", 32, (255.0, 0.0)),
}
BACKBONE = "backbone"          # the layer name of a keras.applications backbone inside our models


def application(params: dict[str, Any], x: Any, input_shape: tuple[int, ...]) -> Any:
    """A keras.applications backbone (no top) with ``weights`` none, imagenet or a local weights file.

    Grey images get three channels and small ones are resized up; the
    backbone's BatchNorm momentum is lowered to ours, since with 0.99-0.999 and
    the few steps of a small dataset its moving statistics stay near their
    initial values and inference reads chance (measured).
    """
    import keras

    constructor, side, (scale, offset) = APPLICATIONS[params["architecture"]]
    height, width = max(input_shape[0], side), max(input_shape[1], side)
    if (height, width) != tuple(input_shape[:2]):
        x = keras.layers.Resizing(height, width, interpolation="bilinear")(x)
    if input_shape[-1] == 1:
        x = keras.layers.Concatenate()([x, x, x])
    x = keras.layers.Rescaling(scale, offset)(x)
    weights = params["weights"]
    try:
        base = getattr(keras.applications, constructor)(
            include_top=False, weights=None if weights == "none" else weights, input_shape=(height, width, 3))
    except Exception as e:   # no network for imagenet, or a file of another backbone
        where = ("ImageNet weights could not be downloaded" if weights == "imagenet"
                 else f"weights file {weights} could not be loaded")
        raise ValueError(f"{params['architecture']}: {where} ({str(e).splitlines()[0][:200]}); use weights: none, "
                         "a local .weights.h5 file of this backbone (sweeps export --format backbone), or, for "
                         "imagenet, put Keras's file in ~/.keras/models/") from None
    base.name = BACKBONE
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return base(x)


def backbone(model: Any) -> Any | None:
    """The keras.applications backbone inside a model, if it has one."""
    return next((layer for layer in model.layers if layer.name == BACKBONE), None)


def set_phase(model: Any, params: dict[str, Any], phase: str) -> None:
    """Which backbone layers train: ``full`` (all), ``frozen`` (none) or ``fine_tune``.

    ``fine_tune`` trains the top ``unfreeze_layers`` layers (0: all) and keeps
    every BatchNorm layer frozen, so they keep their (pre-trained) statistics
    and run in inference mode, as the Keras transfer-learning guide advises.
    """
    import keras

    base = backbone(model)
    if base is None:
        return
    base.trainable = phase != "frozen"
    if phase != "fine_tune":
        for layer in base.layers:
            layer.trainable = base.trainable
        return
    n = params["unfreeze_layers"]
    for i, layer in enumerate(base.layers):
        top = n == 0 or i >= len(base.layers) - n
        layer.trainable = top and not isinstance(layer, keras.layers.BatchNormalization)


ARCHITECTURES: dict[str, Callable[..., Any]] = {"simple_cnn": simple_cnn, "resnet": resnet,
                                               **{name: application for name in APPLICATIONS}}


def build(params: dict[str, Any], input_shape: tuple[int, ...], n_classes: int,
          augmentation: list[Any] | None = None, builder: ModelBuilder | None = None) -> Any:
    """A compiled-ready Keras model: augmentation, then the body with pooling, dropout and a softmax head, or
    the user's own model (``builder``) whole."""
    import keras

    inputs = keras.Input(shape=input_shape)
    x = inputs
    for layer in augmentation or []:
        x = layer(x)
    if builder is not None:
        own = usermodel.build(builder, params, input_shape, n_classes)
        return keras.Model(inputs, own(x), name=own.name)
    x = ARCHITECTURES[params["architecture"]](params, x, input_shape)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if params["dropout"] > 0:
        x = keras.layers.Dropout(params["dropout"])(x)
    # float32 probabilities under a mixed-precision policy too: a float16 softmax loses the small ones
    outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=_regularizer(params),
                                 dtype="float32")(x)
    return keras.Model(inputs, outputs, name=params["architecture"])
