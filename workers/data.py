"""Dataset -> in-memory arrays, split once per sweep; and the training pipeline a trial feeds them through.

``load`` runs in the control plane (no TensorFlow there), so a bad dataset
is reported before any trial starts. In-memory datasets then reach every
worker through Ray's object store; image folders are read by path on each
machine that runs trials (``FolderRef``), decoded once per machine, never
per trial (DESIGN principle 5). ``training_inputs`` builds a trial's input
pipeline on the worker: tf.data under TensorFlow, a Keras ``PyDataset``
under JAX.
"""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers import augment, sources
from workers.sources import DatasetError

__all__ = ["Arrays", "DatasetError", "FolderRef", "TrainingInputs", "load", "reference", "training_inputs"]


@dataclass(frozen=True)
class Arrays:
    x_train: np.ndarray     # float32, (n, h, w, c), scaled to [0, 1]
    y_train: np.ndarray     # int32 class indices
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: tuple[str, ...]
    x_test: np.ndarray | None = None     # held out before the sweep; never sent to a trial
    y_test: np.ndarray | None = None
    skipped: tuple[str, ...] = ()        # unreadable image files left out (dataset.on_corrupt: skip)
    # Cross-validation (dataset.folds): x_train holds every non-test image and fold its fold (0..k-1);
    # x_val repeats the last fold, on which the last fold's model (the one kept) was validated.
    fold: np.ndarray | None = None

    def training_only(self) -> Arrays:
        """What trials get: no test split, so nothing the sweep selects on can have seen it."""
        return Arrays(self.x_train, self.y_train, self.x_val, self.y_val, self.class_names, fold=self.fold)

    def split(self, k: int) -> Arrays:
        """Fold ``k`` of a cross-validated dataset as a plain train / validation split."""
        assert self.fold is not None
        train, val = self.fold != k, self.fold == k
        return Arrays(self.x_train[train], self.y_train[train], self.x_train[val], self.y_train[val],
                      self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape), "n_classes": self.n_classes,
            "n_train": int(len(self.y_train)), "n_val": int(len(self.y_val)),
            "folds": 0 if self.fold is None else int(self.fold.max()) + 1,
            "n_test": 0 if self.y_test is None else int(len(self.y_test)),
            "class_names": list(self.class_names),
            "skipped_files": list(self.skipped),
        }


def load(dataset: dict[str, Any], seed: int = 0) -> Arrays:
    """Load the configured dataset (a ``DatasetConfig.to_dict()``) and split it."""
    name = dataset["name"]
    x_val = y_val = x_test = y_test = None
    skipped: list[str] = []
    if name == "digits":
        x, y, names = sources.digits()
    elif name == "mnist":
        x, y, names = sources.mnist()
    elif name == "npz":
        x, y, x_val, y_val, x_test, y_test, names = sources.npz(dataset["path"])
    elif name == "folder":
        x, y, names, skipped = sources.cached_folder(dataset["path"], dataset.get("image_size"),
                                              dataset.get("color", "grayscale"), dataset.get("on_corrupt", "fail"))
    else:
        raise DatasetError(f"unknown dataset {name!r}")
    limit = dataset.get("max_images")
    if limit and limit < len(y):       # a stratified sample: quick runs on part of a dataset
        x, y, _, _ = stratified_split(x, y, len(y) - limit, seed, "max_images")
    test_fraction = dataset.get("test_fraction", 0.0)
    val_fraction = dataset.get("val_fraction", 0.2)
    if x_test is None and test_fraction > 0:      # first, so validation never shares an image with test
        x, y, x_test, y_test = stratified_split(x, y, test_fraction, seed, "test")
        val_fraction = val_fraction / (1.0 - test_fraction)     # both are fractions of the whole
    folds = dataset.get("folds")
    if folds:
        if x_val is not None:      # an .npz with its own validation split joins the folds
            x, y = np.concatenate([x, x_val]), np.concatenate([y, y_val])
        fold = fold_ids(y, folds, seed)
        last = fold == folds - 1
        return Arrays(x, y, x[last], y[last], tuple(names), x_test, y_test, tuple(skipped), fold)
    if x_val is None or y_val is None:
        x, y, x_val, y_val = stratified_split(x, y, val_fraction, seed, "validation")
    return Arrays(x, y, x_val, y_val, tuple(names), x_test, y_test, tuple(skipped))


def fold_ids(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified k-fold assignment, the same for every trial and resume."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    if (counts[counts > 0] < k).any():
        raise DatasetError(f"dataset.folds is {k}, but a class has only {int(counts[counts > 0].min())} "
                           "images outside the test split; lower folds or add images")
    fold = np.zeros(len(y), dtype="int32")
    for i, (_, val) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)):
        fold[val] = i
    return fold


def stratified_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int,
                     what: str = "validation") -> tuple[np.ndarray, ...]:
    """The same split for every trial and every resume: fixed seed, class proportions kept."""
    from sklearn.model_selection import train_test_split

    key = {"validation": "val_fraction", "test": "test_fraction"}.get(what, what)
    counts = np.bincount(y)
    if (counts[counts > 0] < 2).any():
        raise DatasetError(f"a class has a single example; a stratified {what} split needs at least 2 per class")
    try:
        x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as e:
        amount = f"{fraction:.0%}" if fraction < 1 else f"{fraction} images"
        raise DatasetError(f"cannot split off {amount} for {what}: {e}; change dataset.{key}") from None
    return x_tr, y_tr, x_va, y_va


@dataclass(frozen=True)
class FolderRef:
    """What a worker gets for an image folder: where it is and how it was split, no pixels.

    ``materialize`` reads the folder on the worker's machine through the
    decode cache, splits it as the coordinator did (same config, same seed)
    and keeps the result for the process's next trials.
    """

    dataset: dict[str, Any]
    seed: int

    def materialize(self) -> tuple[Arrays, str]:
        """The training arrays, and where they came from: memory, cache or decoded."""
        key = json.dumps([self.dataset, self.seed], sort_keys=True)
        if key in _MATERIALIZED:
            return _MATERIALIZED[key], "memory"
        path = self.dataset["path"]
        if not os.path.isdir(path):
            raise DatasetError(f"this worker ({socket.gethostname()}) cannot see dataset folder {path}; every machine "
                               "that runs trials needs it at the same path (a shared mount or a copy)")
        before = sources.CACHE_STATS["decoded"]
        arrays = load(self.dataset, self.seed).training_only()
        _MATERIALIZED.clear()          # one dataset per process: a sweep's
        _MATERIALIZED[key] = arrays
        return arrays, "decoded" if sources.CACHE_STATS["decoded"] > before else "cache"


_MATERIALIZED: dict[str, Arrays] = {}


def reference(dataset: dict[str, Any], seed: int, arrays: Arrays) -> Arrays | FolderRef:
    """What trials are sent: a folder by path, anything else as its (training-only) arrays."""
    return FolderRef(dataset, seed) if dataset["name"] == "folder" else arrays.training_only()


@dataclass
class TrainingInputs:
    """What ``model.fit`` takes for one trial, built on the worker."""

    train: Any                              # batches: a tf.data.Dataset, or a PyDataset under JAX
    steps_per_epoch: int
    validation: tuple[np.ndarray, np.ndarray]   # images and targets
    class_weight: dict[int, float] | None
    one_hot: bool                           # targets are distributions (label smoothing, mixup), not indices


def training_inputs(data: Arrays, params: dict[str, Any], seed: int) -> TrainingInputs:
    """Sampling, class weights, targets and the batch pipeline of one trial."""
    import keras

    x, y = data.x_train, data.y_train
    if params["sampling"] == "oversample":
        x, y = oversample(x, y, seed)
    one_hot = params["label_smoothing"] > 0 or params["mixup_alpha"] > 0
    weights = class_weights(y, data.n_classes) if params["class_weight"] == "balanced" else None
    y_val = data.y_val
    if one_hot:
        y, y_val = (keras.utils.to_categorical(v, data.n_classes) for v in (y, y_val))
    train = batches(x, y, params["batch_size"], params["mixup_alpha"], seed)
    steps = (math.ceil(len(y) / params["batch_size"]) if keras.backend.backend() == "tensorflow"
             else len(train))      # the PyDataset drops the last, smaller batch
    return TrainingInputs(train, steps, (data.x_val, y_val), weights, one_hot)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, alpha: float, seed: int) -> Any:
    """The training pipeline: in-memory tensors, reshuffled each epoch, mixup per batch, prefetched.

    The images arrive decoded and resized (once per sweep, in the control
    plane), so there is nothing to cache per trial. Under JAX (no TensorFlow,
    so no tf.data) the same batches come from a Keras ``PyDataset``.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return _array_batches(x, y, batch_size, alpha, seed)
    import tensorflow as tf

    ds = (tf.data.Dataset.from_tensor_slices((x, y.astype("float32") if alpha > 0 else y))
          .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
          .batch(batch_size))
    if alpha > 0:
        ds = ds.map(lambda a, b: augment.mixup(a, b, alpha), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _array_batches(x: np.ndarray, y: np.ndarray, batch_size: int, alpha: float, seed: int) -> Any:
    """tf.data's pipeline above in NumPy, for backends without TensorFlow: a seeded reshuffle each epoch.

    Full batches only: XLA compiles the training step once per batch shape, and a last, smaller
    batch would cost a second compile; reshuffled each epoch, every image still takes part.
    """
    import keras

    class ArrayBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))

        def __len__(self) -> int:
            return max(1, len(x) // batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            chosen = self.order[index * batch_size:(index + 1) * batch_size]
            images, labels = x[chosen], y[chosen]
            if alpha > 0:
                return augment.mixup_arrays(images, labels.astype("float32"), alpha, self.rng)
            return images, labels

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(x))

    return ArrayBatches()


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """n / (k * count) per class, so every class weighs the same in the loss in total."""
    counts = np.bincount(y, minlength=n_classes).astype("float64")
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


def oversample(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every class drawn up to the largest class's count (its own images repeated, in a seeded order)."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(y)
    chosen = [np.concatenate([idx, rng.choice(idx, counts.max() - len(idx))]) if len(idx) else idx
              for idx in (np.flatnonzero(y == c) for c in range(len(counts)))]
    order = rng.permutation(np.concatenate(chosen))
    return x[order], y[order]
