"""Dataset sources: built-ins, .npz, image folders; clear errors before any trial starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers import data, sources
from workers.data import DatasetError


def test_digits_split_is_stratified_scaled_and_fixed() -> None:
    a = data.load({"name": "digits", "val_fraction": 0.2}, seed=0)
    assert a.input_shape == (8, 8, 1) and a.n_classes == 10
    assert len(a.y_train) + len(a.y_val) == 1797 and abs(len(a.y_val) - 360) <= 1
    assert a.x_train.dtype == np.float32 and a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    share_train = np.bincount(a.y_train) / len(a.y_train)
    share_val = np.bincount(a.y_val) / len(a.y_val)
    assert np.abs(share_train - share_val).max() < 0.01
    b = data.load({"name": "digits", "val_fraction": 0.2}, seed=0)
    assert np.array_equal(a.y_val, b.y_val)


def test_mnist_is_the_5000_real_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a = data.load({"name": "mnist"}, seed=0)
    assert a.input_shape == (28, 28, 1) and a.n_classes == 10
    assert len(a.y_train) + len(a.y_val) == 5000
    assert (tmp_path / "sweeps" / "mnist5k.npz").exists()          # cached for the next load
    again = data.load({"name": "mnist"}, seed=0)
    assert np.array_equal(a.x_val, again.x_val)


def test_npz_with_and_without_validation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 10, 10), dtype=np.uint8)
    y = np.repeat(["cat", "dog"], 20)
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y)
    a = data.load({"name": "npz", "path": str(tmp_path / "a.npz"), "val_fraction": 0.25})
    assert a.class_names == ("cat", "dog") and a.input_shape == (10, 10, 1) and len(a.y_val) == 10
    assert a.x_train.max() <= 1.0
    np.savez(tmp_path / "b.npz", x_train=x, y_train=y, x_val=x[:4], y_val=y[:4])
    b = data.load({"name": "npz", "path": str(tmp_path / "b.npz")})
    assert len(b.y_val) == 4 and len(b.y_train) == 40


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 4, 4)))
    with pytest.raises(DatasetError, match="no 'x_train' array"):
        data.load({"name": "npz", "path": str(tmp_path / "bad.npz")})
    np.savez(tmp_path / "empty.npz", x_train=np.zeros((0, 4, 4)), y_train=np.zeros((0,)))
    with pytest.raises(DatasetError, match="x_train is empty"):
        data.load({"name": "npz", "path": str(tmp_path / "empty.npz")})
    with pytest.raises(DatasetError, match="does not exist"):
        data.load({"name": "npz", "path": str(tmp_path / "missing.npz")})


@pytest.mark.parametrize("arrays, message", [
    ({"x_val": np.zeros((10, 9, 9)), "y_val": np.arange(10) % 4},
     "x_val's images are 9x9x1 but x_train's are 8x8x1; give every split the same image shape"),
    ({"x_test": np.zeros((10, 8, 8, 3)), "y_test": np.arange(10) % 4},
     "x_test's images are 8x8x3 but x_train's are 8x8x1"),
    ({"x_val": np.zeros((10, 8, 8)), "y_val": np.arange(10) % 5}, "y_val has classes that y_train never has (4)"),
    ({"y_train": np.arange(40) % 4 + 0.5}, "y_train holds labels that are not whole numbers (e.g. 0.5)"),
    ({"y_train": np.eye(4)[np.arange(40) % 4]}, "got (40, 4); one-hot labels? save their argmax"),
    ({"y_train": np.where(np.arange(40) == 3, np.nan, np.arange(40) % 4)}, "y_train holds NaN or infinite labels"),
])
def test_npz_splits_are_checked_against_each_other(tmp_path: Path, arrays: dict, message: str) -> None:
    """Before any study is written: a split that every trial would fail on is one clear line."""
    np.savez(tmp_path / "d.npz", **{"x_train": np.zeros((40, 8, 8)), "y_train": np.arange(40) % 4, **arrays})
    with pytest.raises(DatasetError) as err:
        data.load({"name": "npz", "path": str(tmp_path / "d.npz")})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_whole_float_labels_and_a_column_of_labels_are_class_indices(tmp_path: Path) -> None:
    y = np.arange(40) % 4
    np.savez(tmp_path / "d.npz", x_train=np.zeros((40, 8, 8)), y_train=y.astype(float).reshape(-1, 1))
    loaded = data.load({"name": "npz", "path": str(tmp_path / "d.npz"), "test_fraction": 0})
    assert loaded.class_names == ("0", "1", "2", "3") and len(loaded.y_train) + len(loaded.y_val) == 40


def _images(folder: Path, cls: str, n: int, size: tuple[int, int], color: int) -> None:
    (folder / cls).mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", size, (color, i * 10, 0)).save(folder / cls / f"{i}.png")


def test_folder_of_class_subfolders(tmp_path: Path) -> None:
    _images(tmp_path, "bright", 6, (12, 10), 250)
    _images(tmp_path, "dark", 6, (20, 20), 5)          # other size: resized
    a = data.load({"name": "folder", "path": str(tmp_path), "image_size": [16, 16], "color": "rgb",
                   "val_fraction": 0.34})
    assert a.class_names == ("bright", "dark") and a.input_shape == (16, 16, 3)
    assert len(a.y_train) + len(a.y_val) == 12
    assert a.x_train[a.y_train == 0, ..., 0].mean() > 0.9 > 0.1 > a.x_train[a.y_train == 1, ..., 0].mean()


def test_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="is empty; it needs one subfolder of images per class"):
        data.load({"name": "folder", "path": str(empty)})
    one = tmp_path / "one"
    _images(one, "a", 3, (8, 8), 0)
    with pytest.raises(DatasetError, match="needs at least 2"):
        data.load({"name": "folder", "path": str(one)})
    hollow = tmp_path / "hollow"
    _images(hollow, "a", 3, (8, 8), 0)
    (hollow / "b").mkdir()
    with pytest.raises(DatasetError, match="has no images"):
        data.load({"name": "folder", "path": str(hollow)})
    broken = tmp_path / "broken"
    _images(broken, "a", 3, (8, 8), 0)
    _images(broken, "b", 3, (8, 8), 0)
    (broken / "b" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*x\.png"):
        data.load({"name": "folder", "path": str(broken)})


def test_test_split_is_held_out_first_and_never_shared() -> None:
    from sweeps.config import from_dict
    from tests.helpers import TINY_SPACE

    dataset = from_dict(TINY_SPACE, source="t").dataset.to_dict()     # defaults: val 0.2, test 0.1 of the whole
    a = data.load(dataset, seed=0)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    assert abs(len(a.y_test) - 180) <= 1 and abs(len(a.y_val) - 360) <= 1
    rows = [{x.tobytes() for x in part} for part in (a.x_train, a.x_val, a.x_test)]
    duplicates_in_digits = 1797 - len(rows[0] | rows[1] | rows[2])     # a few digits images repeat exactly
    assert len(rows[2] & (rows[0] | rows[1])) <= duplicates_in_digits
    assert np.array_equal(data.load(dataset, seed=0).y_test, a.y_test)        # the same for every resume
    only = a.training_only()
    assert only.x_test is None and only.y_test is None and np.array_equal(only.x_val, a.x_val)
    assert a.describe()["n_test"] == len(a.y_test) and only.describe()["n_test"] == 0


def test_npz_test_arrays_are_used_as_given(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((40, 6, 6)).astype("float32")
    y = np.repeat([3, 7], 20)
    np.savez(tmp_path / "t.npz", x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])
    a = data.load({"name": "npz", "path": str(tmp_path / "t.npz"), "val_fraction": 0.25, "test_fraction": 0.1})
    assert len(a.y_test) == 6 and len(a.y_train) + len(a.y_val) == 40 and a.class_names == ("3", "7")


def test_corrupt_images_can_be_skipped_and_are_named(tmp_path: Path) -> None:
    _images(tmp_path, "a", 4, (8, 8), 0)
    _images(tmp_path, "b", 4, (8, 8), 200)
    (tmp_path / "b" / "bad.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(DatasetError, match=r"bad\.jpg.*dataset\.on_corrupt: skip"):
        data.load({"name": "folder", "path": str(tmp_path), "val_fraction": 0.25})
    a = data.load({"name": "folder", "path": str(tmp_path), "val_fraction": 0.25, "on_corrupt": "skip"})
    assert a.skipped == (str(tmp_path / "b" / "bad.jpg"),) and len(a.y_train) + len(a.y_val) == 8
    assert a.describe()["skipped_files"] == [str(tmp_path / "b" / "bad.jpg")]


def test_folder_is_decoded_once_per_machine_then_read_from_the_cache(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _images(tmp_path / "set", "bright", 6, (12, 10), 250)
    _images(tmp_path / "set", "dark", 6, (12, 10), 5)
    spec = {"name": "folder", "path": str(tmp_path / "set"), "image_size": [16, 16], "color": "rgb",
            "val_fraction": 0.34, "test_fraction": 0.0}
    first = data.load(spec)
    cached = list((tmp_path / "cache" / "sweeps" / "folders").glob("*.npz"))
    assert len(cached) == 1
    decoded = sources.CACHE_STATS["decoded"]
    again = data.load(spec)
    assert sources.CACHE_STATS["decoded"] == decoded, "the second load decoded the images again"
    assert np.array_equal(first.x_train, again.x_train) and np.array_equal(first.y_val, again.y_val)
    Image.new("RGB", (12, 10), (0, 0, 0)).save(tmp_path / "set" / "bright" / "0.png")     # an image changed
    changed = data.load(spec)
    assert sources.CACHE_STATS["decoded"] == decoded + 1
    assert len(list((tmp_path / "cache" / "sweeps" / "folders").glob("*.npz"))) == 2
    assert not np.array_equal(changed.x_train, first.x_train) or not np.array_equal(changed.x_val, first.x_val)


def test_a_folder_reaches_workers_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _images(tmp_path / "set", "a", 6, (8, 8), 250)
    _images(tmp_path / "set", "b", 6, (8, 8), 5)
    spec = {"name": "folder", "path": str(tmp_path / "set"), "val_fraction": 0.34, "test_fraction": 0.0}
    arrays = data.load(spec, seed=3)
    ref = data.reference(spec, 3, arrays)
    assert isinstance(ref, data.FolderRef)
    worker_arrays, source = ref.materialize()
    assert source == "cache"                  # the coordinator's load filled this machine's cache
    assert np.array_equal(worker_arrays.x_train, arrays.x_train) and np.array_equal(worker_arrays.y_val, arrays.y_val)
    assert ref.materialize()[1] == "memory"   # the same process's next trial
    digits = data.load({"name": "digits"})
    assert isinstance(data.reference({"name": "digits"}, 0, digits), data.Arrays)
    missing = data.FolderRef({**spec, "path": str(tmp_path / "not-mounted")}, 3)
    with pytest.raises(DatasetError, match=r"this worker \(.*\) cannot see dataset folder .*not-mounted; every machine"):
        missing.materialize()
