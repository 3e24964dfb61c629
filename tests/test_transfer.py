"""Transfer learning end to end: pretrain a backbone on one built-in dataset, fine-tune it on the other.

The pretraining runs the trainer in this process (real Keras, no sweep around
it); the fine-tuning is a real sweep of the YAML a user writes (real Keras and
SQLite, its trials on the in-process dispatcher to keep the suite short), and
its backbone goes out through `sweeps export --format backbone`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import cli_here, write_space

pytestmark = pytest.mark.slow

FIXED = {"architecture": "mobilenet_v2", "learning_rate": 1e-3, "batch_size": 16, "optimizer": "adam"}
ONE_TRIAL = {"budget": {"n_trials": 1}, "parallel": 1, "resources": {"cpus": 2}, "pruner": {"name": "none"}}


def _backbone_weights(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=str(path), input_shape=(32, 32, 3))
    return [(layer.name, layer.get_weights()) for layer in base.layers if layer.weights]


def _pretrain_backbone(path: Path) -> float:
    """MobileNetV2 trained by the trainer on 1,000 MNIST images; its backbone's weights saved to ``path``."""
    from workers import checkpoint as ckpt
    from workers import data as datasets
    from workers import models
    from workers.hyperparameters import DEFAULTS as PARAMETER_DEFAULTS
    from workers.spec import Decision, EpochReport, TrialSpec
    from workers.trainer import train_trial

    class KeepLast:
        state: bytes | None = None

        def report(self, report: EpochReport) -> Decision:
            self.state = report.checkpoint
            return Decision.CONTINUE

    arrays = datasets.load({"name": "mnist", "max_images": 1000}, seed=0)
    params = {**PARAMETER_DEFAULTS, **FIXED}
    keep = KeepLast()
    result = train_trial(TrialSpec(number=0, params=params, epochs=3, seed=0, threads=2), arrays, keep)
    assert keep.state is not None and result.value is not None
    state = ckpt.unpack(keep.state)
    model = models.build(params, arrays.input_shape, arrays.n_classes)
    model.set_weights(state.best_weights if state.best_weights is not None else state.weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    models.backbone(model).save_weights(str(path))
    return result.value


def test_pretrain_on_mnist_then_fine_tune_on_digits_from_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sweeps.config import load
    from sweeps.dispatch import InlineDispatcher
    from sweeps.runner import run_sweep
    from workers.trainer import train_trial

    url = f"sqlite:///{tmp_path}/sweeps.db"
    pretrained = tmp_path / "models" / "pre-backbone.weights.h5"
    value = _pretrain_backbone(pretrained)
    assert value > 0.3, value      # MobileNetV2 from scratch on 700 MNIST images: about 0.5 in 3 epochs
    assert pretrained.stat().st_size > 1_000_000

    unfreeze = 12
    write_space(tmp_path, "fine.yaml", study="fine", dataset={"name": "digits", "max_images": 600}, epochs=4,
                **ONE_TRIAL, parameters={**FIXED, "learning_rate": 3e-3, "batch_size": 32,
                                         "weights": "models/pre-backbone.weights.h5", "freeze_epochs": 1,
                                         "unfreeze_layers": unfreeze, "fine_tune_lr_factor": 0.3})
    assert run_sweep(load(tmp_path / "fine.yaml"), url, dispatcher=InlineDispatcher(train_trial))["complete"] == 1
    best = json.loads(cli_here(capsys, "best", "fine", "--storage", url, "--json")[1])
    assert best["value"] > 0.3, best          # digits, 10 classes: chance is 0.1
    assert len(best["learning_curve"]) == 4
    epochs = {int(k): v for k, v in best["learning_curve"].items()}   # the best epoch's weights are exported:
    assert max(epochs, key=epochs.__getitem__) > 1, epochs            # one after the backbone was unfrozen
    assert {**best["params"], **best["fixed_params"]}["weights"] == str(pretrained)

    code, out, err = cli_here(capsys, "export", "fine", "--storage", url, "--format", "backbone",
                              "--out", str(tmp_path / "tuned"), "--json")
    assert code == 0, err
    before = _backbone_weights(pretrained)
    after = _backbone_weights(Path(json.loads(out)["path"]))
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    top = {layer.name for layer in base.layers[-unfreeze:]}
    bn = {layer.name for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)}
    changed = {name for (name, w0), (_, w1) in zip(before, after)
               if any(not np.array_equal(a, b) for a, b in zip(w0, w1))}
    assert changed, "fine-tuning changed nothing"
    assert changed <= top - bn, f"frozen layers changed: {sorted(changed - (top - bn))}"
