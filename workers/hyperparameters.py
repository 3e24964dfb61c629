"""Every hyperparameter a trial understands, once: name, kind, default, bounds or choices, help.

The config validator (``sweeps/parameters.py``), the trial spec's defaults
(``SweepConfig.trial_spec``) and the README's parameter table all come from
this table; ``tests/test_architecture.py`` checks the README against
``readme_table()``. An unknown name is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
ARCHITECTURES = ("simple_cnn", "resnet", "mobilenet_v2", "efficientnet_b0")   # the last two: keras.applications
CLASS_WEIGHTS = ("none", "balanced")      # balanced: each class weighs n / (k * count), as scikit-learn's
SAMPLING = ("none", "oversample")         # oversample: repeat each class's images up to the largest class
LR_SCHEDULES = ("constant", "cosine", "plateau")   # plateau: halve the rate after 2 epochs without improvement
WEIGHTS = ("none", "imagenet")            # or the path of a .weights.h5 file

FLOAT, INT, BOOL, CHOICE, WEIGHTS_KIND = "float", "int", "bool", "choice", "weights"


@dataclass(frozen=True)
class Hyperparameter:
    """One knob. Numbers: ``low``..``high``, each end allowed or not; choices: ``choices``."""

    name: str
    kind: str                       # float | int | bool | choice | weights
    default: Any
    help: str
    low: float = -math.inf
    high: float = math.inf
    low_ok: bool = True
    high_ok: bool = True
    choices: tuple[str, ...] = ()

    def bounds_error(self, value: float) -> str | None:
        """Why ``value`` is out of bounds (``None`` when it is within them)."""
        lo, hi = self.low, self.high
        if (math.isnan(value) or value < lo or (value == lo and not self.low_ok)
                or value > hi or (value == hi and not self.high_ok)):
            lo_s = f"{'>=' if self.low_ok else '>'} {lo}"
            hi_s = "" if hi == math.inf else f" and {'<=' if self.high_ok else '<'} {hi}"
            return f"{self.name} must be {lo_s}{hi_s}, got {value}"
        return None

    def kind_text(self) -> str:
        """The README's "kind" column: e.g. ``float in [0, 1)``, ``int >= 1``, ``adam, sgd``."""
        if self.kind == BOOL:
            return "true, false"
        if self.kind == CHOICE:
            return ", ".join(self.choices)
        if self.kind == WEIGHTS_KIND:
            return "none, imagenet, a file"
        lo, hi = _num(self.low), _num(self.high)
        if self.high == math.inf:
            return f"{self.kind} {'>=' if self.low_ok else '>'} {lo}"
        if self.kind == INT and self.low_ok and self.high_ok:
            return f"int {lo}..{hi}"
        return f"{self.kind} in {'[' if self.low_ok else '('}{lo}, {hi}{']' if self.high_ok else ')'}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _float(name: str, default: float, help: str, low: float = 0.0, high: float = math.inf, *,
           low_ok: bool = True, high_ok: bool = False) -> Hyperparameter:
    return Hyperparameter(name, FLOAT, default, help, low, high, low_ok, high_ok)


def _int(name: str, default: int, help: str, low: int = 0, high: float = math.inf) -> Hyperparameter:
    return Hyperparameter(name, INT, default, help, low, high, True, high != math.inf)


def _choice(name: str, default: str, choices: tuple[str, ...], help: str) -> Hyperparameter:
    return Hyperparameter(name, CHOICE, default, help, choices=choices)


HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    _float("learning_rate", 1e-3, "optimizer step size", low_ok=False),
    _int("batch_size", 64, "", low=1),
    _choice("optimizer", "adam", OPTIMIZERS, ""),
    _float("momentum", 0.9, "sgd and rmsprop", high=1.0),
    _float("weight_decay", 4e-3, "adamw's decoupled decay"),
    _float("dropout", 0.0, "before the classifier", high=1.0),
    _float("l2", 0.0, "L2 penalty on every conv and dense kernel"),
    _float("augment", 0.0, "augmentation strength: rotation (up to ±18°), zoom (20 %), translation (15 %), "
           "contrast (40 %) and brightness (20 %) scale with it; flips only when `dataset.flip`; in the model, "
           "so only in training", high=1.0, high_ok=True),
    _choice("architecture", "simple_cnn", ARCHITECTURES, "the last two are `keras.applications` backbones: grey "
            "images get 3 channels, images below 32 px are resized up to 32"),
    _int("width", 32, "filters of the first block, doubling per block / stage", low=1, high=1024),
    _int("depth", 2, "simple_cnn: VGG-style blocks (two conv-BN-ReLU and a max-pool); resnet: residual blocks "
         "per stage (three stages)", low=1, high=16),
    _choice("class_weight", "none", CLASS_WEIGHTS, "balanced: each class weighs n / (k x its count) in the "
            "loss, for imbalanced data"),
    _choice("sampling", "none", SAMPLING, "oversample: each class's training images repeated (seeded) up to "
            "the largest class's count"),
    Hyperparameter("batchnorm", BOOL, True, "BatchNorm after every convolution; off: convolutions with a bias"),
    _choice("lr_schedule", "constant", LR_SCHEDULES, "cosine: decay to 0 over the trial's epochs; plateau: "
            "halve the rate after 2 epochs without a better metric"),
    _float("label_smoothing", 0.0, "the loss's targets: 1 - s on the class, s spread over all classes",
           high=1.0),
    _int("early_stopping", 0, "stop a trial after this many epochs without a better metric (0: off); it ends "
         "COMPLETE with reason \"early stopped ...\"", high=1000),
    _float("random_erasing", 0.0, "probability of blanking a random patch (2-25 % of the image) of each "
           "training image", high=1.0, high_ok=True),
    _float("mixup_alpha", 0.0, "mixup: each training batch blended with a shuffled copy of itself, weight ~ "
           "Beta(alpha, alpha), labels likewise (a tf.data pipeline, prefetched); 0: off"),
    Hyperparameter("weights", WEIGHTS_KIND, "none", "applications only: random start, ImageNet weights "
                   "(downloaded by Keras into `~/.keras/models/`; a clear error when that fails), or a "
                   "`.weights.h5` file of the backbone, relative to the YAML (`sweeps export --format backbone` "
                   "writes one)", choices=WEIGHTS),
    _int("freeze_epochs", 0, "transfer learning: epochs with the backbone frozen (only the head trains), then "
         "fine-tuning; 0: everything trains from the start", high=10000),
    _int("unfreeze_layers", 0, "fine-tuning trains the backbone's top N layers (0: all); its BatchNorm layers "
         "stay frozen, in inference mode", high=10000),
    _float("fine_tune_lr_factor", 0.1, "fine-tuning runs at `learning_rate` times this", low_ok=False),
)
BY_NAME: dict[str, Hyperparameter] = {h.name: h for h in HYPERPARAMETERS}
DEFAULTS: dict[str, Any] = {h.name: h.default for h in HYPERPARAMETERS}


def _default_text(h: Hyperparameter) -> str:
    if isinstance(h.default, bool):
        return str(h.default).lower()
    if isinstance(h.default, float) and h.default and abs(h.default) < 0.01:
        return f"{h.default:.0e}".replace("e-0", "e-")
    return str(h.default)


def readme_table() -> str:
    """The README's table of parameters, as Markdown."""
    rows = ["| parameter | kind | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{h.name}` | {h.kind_text()} | {_default_text(h)} | {h.help} |".replace("|  |", "| |")
             for h in HYPERPARAMETERS]
    return "\n".join(rows)
