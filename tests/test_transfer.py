"""Transfer learning end to end: pretrain a backbone on one built-in dataset, fine-tune it on the other.

Real sweeps (Ray, Keras, SQLite) through the CLI, as a user runs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli, write_space

pytestmark = pytest.mark.slow

FIXED = {"architecture": "mobilenet_v2", "learning_rate": 1e-3, "batch_size": 16, "optimizer": "adam"}
ONE_TRIAL = {"budget": {"n_trials": 1}, "parallel": 1, "resources": {"cpus": 2}, "pruner": {"name": "none"}}


def _backbone_weights(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=str(path), input_shape=(32, 32, 3))
    return [(layer.name, layer.get_weights()) for layer in base.layers if layer.weights]


def test_pretrain_on_mnist_then_fine_tune_on_digits_from_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sweeps.db"
    write_space(tmp_path, "pre.yaml", study="pre", dataset={"name": "mnist", "max_images": 1000}, epochs=3,
                parameters=FIXED, **ONE_TRIAL)
    done = run_cli("run", str(tmp_path / "pre.yaml"), "--storage", url, "--quiet", timeout=600)
    assert done.returncode == 0, done.stderr
    exported = run_cli("export", "pre", "--storage", url, "--format", "backbone", "--out", str(tmp_path / "models"),
                       "--json")
    assert exported.returncode == 0, exported.stderr
    pre = json.loads(run_cli("best", "pre", "--storage", url, "--json").stdout)
    assert pre["value"] > 0.3, pre      # MobileNetV2 from scratch on 700 MNIST images: about 0.5 in 3 epochs
    pretrained = Path(json.loads(exported.stdout)["path"])
    assert pretrained.name == "pre-backbone.weights.h5" and pretrained.stat().st_size > 1_000_000

    unfreeze = 12
    write_space(tmp_path, "fine.yaml", study="fine", dataset={"name": "digits", "max_images": 600}, epochs=4,
                **ONE_TRIAL, parameters={**FIXED, "learning_rate": 3e-3, "batch_size": 32, "weights": "models/pre-backbone.weights.h5", "freeze_epochs": 2,
                            "unfreeze_layers": unfreeze, "fine_tune_lr_factor": 0.1})
    done = run_cli("run", str(tmp_path / "fine.yaml"), "--storage", url, "--quiet", timeout=600)
    assert done.returncode == 0, done.stderr
    best = json.loads(run_cli("best", "fine", "--storage", url, "--json").stdout)
    assert best["value"] > 0.3, best          # digits, 10 classes: chance is 0.1
    assert len(best["learning_curve"]) == 4
    assert {**best["params"], **best["fixed_params"]}["weights"] == str(pretrained)

    exported = run_cli("export", "fine", "--storage", url, "--format", "backbone", "--out", str(tmp_path / "tuned"),
                       "--json")
    assert exported.returncode == 0, exported.stderr
    before = _backbone_weights(pretrained)
    after = _backbone_weights(Path(json.loads(exported.stdout)["path"]))
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    top = {layer.name for layer in base.layers[-unfreeze:]}
    bn = {layer.name for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)}
    changed = {name for (name, w0), (_, w1) in zip(before, after)
               if any(not np.array_equal(a, b) for a, b in zip(w0, w1))}
    assert changed, "fine-tuning changed nothing"
    assert changed <= top - bn, f"frozen layers changed: {sorted(changed - (top - bn))}"
