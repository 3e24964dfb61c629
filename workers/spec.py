"""The plain data that crosses between the control plane and the workers.

Defined once, here, so that both sides agree; nothing in this module imports
TensorFlow, Ray or Optuna, so the control plane can use it freely.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
ARCHITECTURES = ("simple_cnn", "resnet", "mobilenet_v2", "efficientnet_b0")   # the last two: keras.applications
CLASS_WEIGHTS = ("none", "balanced")      # balanced: each class weighs n / (k * count), as scikit-learn's
SAMPLING = ("none", "oversample")         # oversample: repeat each class's images up to the largest class
LR_SCHEDULES = ("constant", "cosine", "plateau")   # plateau: halve the rate after 2 epochs without improvement
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}

# Every hyperparameter a trial understands, with the value it takes when the
# search space neither fixes nor searches it. An unknown name is an error.
PARAMETER_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-3,      # optimizer step size
    "batch_size": 64,
    "optimizer": "adam",        # one of OPTIMIZERS
    "momentum": 0.9,            # sgd and rmsprop only
    "weight_decay": 4e-3,       # adamw only (decoupled decay)
    "dropout": 0.0,             # before the classifier head
    "l2": 0.0,                  # kernel L2 penalty on every conv / dense layer
    "augment": 0.0,             # augmentation strength, 0..1
    "architecture": "simple_cnn",
    "width": 32,                # filters of the first conv block
    "depth": 2,                 # conv blocks (simple_cnn) / residual blocks per stage (resnet)
    "class_weight": "none",     # one of CLASS_WEIGHTS: for imbalanced data
    "sampling": "none",         # one of SAMPLING: for imbalanced data
    "batchnorm": True,          # BatchNorm after every conv (off: conv with bias)
    "lr_schedule": "constant",  # one of LR_SCHEDULES
    "label_smoothing": 0.0,     # 0..1: targets (1 - s) on the class, s spread over all
    "early_stopping": 0,        # patience in epochs without improvement; 0: off
    "random_erasing": 0.0,      # 0..1: probability of blanking a random patch of each training image
    "mixup_alpha": 0.0,         # > 0: mixup with weights ~ Beta(alpha, alpha); 0: off
    "weights": "none",          # mobilenet_v2 / efficientnet_b0: none, imagenet, or a local .weights.h5 file
    "freeze_epochs": 0,         # transfer learning: epochs with the backbone frozen before fine-tuning
    "unfreeze_layers": 0,       # then the backbone's top N layers are trained (0: all of them)
    "fine_tune_lr_factor": 0.1, # at learning_rate times this factor
}


class Decision(str, enum.Enum):
    """What the coordinator answers to a per-epoch report."""

    CONTINUE = "continue"
    PRUNE = "prune"


class TrialState(str, enum.Enum):
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs to train one trial; no storage, no secrets."""

    number: int
    params: dict[str, Any]
    epochs: int
    seed: int
    metric: str = "val_accuracy"
    flip: bool = False          # the dataset allows horizontal flips
    threads: int = 1            # CPU threads TensorFlow may use
    checkpoint: bytes | None = None   # resume from this (workers/checkpoint.py) instead of epoch 0
    save_checkpoints: bool = True     # send a checkpoint with every epoch report
    deterministic: bool = False       # TensorFlow op determinism (slower; repeats values exactly)
    folds: int = 0                    # k-fold cross-validation: k models in turn, steps 1..k*epochs
    mixed_precision: bool = False     # mixed_float16 on a GPU, mixed_bfloat16 on a CPU
    jit_compile: bool = False         # XLA
    steps_per_execution: int = 1


@dataclass(frozen=True)
class EpochReport:
    number: int
    epoch: int                  # 1-based: the step stored in Optuna
    value: float
    logs: dict[str, float] = field(default_factory=dict)
    checkpoint: bytes | None = None   # the state after this epoch, for a retry to resume from


@dataclass(frozen=True)
class TrialResult:
    number: int
    state: TrialState
    value: float | None          # best epoch's metric (None when nothing was measured)
    epochs_run: int
    reason: str = ""             # why it was pruned or failed
    metrics: dict[str, Any] = field(default_factory=dict)


class Reporter(Protocol):
    """The worker's only channel to the coordinator."""

    def report(self, report: EpochReport) -> Decision: ...
