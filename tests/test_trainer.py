"""The worker's training, in-process: real Keras on tiny data, a plain reporter."""

from __future__ import annotations

import numpy as np
import pytest

from workers import data, models
from workers.hyperparameters import DEFAULTS as PARAMETER_DEFAULTS
from workers.spec import Decision, EpochReport, Failure, TrialSpec, TrialState
from workers.trainer import train_trial


class ListReporter:
    """Records reports; answers PRUNE from epoch ``prune_at`` on."""

    def __init__(self, prune_at: int | None = None) -> None:
        self.reports: list[EpochReport] = []
        self.prune_at = prune_at

    def report(self, report: EpochReport) -> Decision:
        self.reports.append(report)
        return Decision.PRUNE if self.prune_at and report.epoch >= self.prune_at else Decision.CONTINUE


@pytest.fixture(scope="module")
def digits() -> data.Arrays:
    return data.load({"name": "digits", "val_fraction": 0.2}, seed=0)


def _spec(epochs: int = 3, **params: object) -> TrialSpec:
    return TrialSpec(number=0, params={**PARAMETER_DEFAULTS, "width": 8, **params}, epochs=epochs, seed=1)


@pytest.mark.parametrize("architecture", ["simple_cnn", "resnet"])
def test_trains_and_reports_every_epoch(digits: data.Arrays, architecture: str) -> None:
    reporter = ListReporter()
    result = train_trial(_spec(architecture=architecture, depth=2, width=16, learning_rate=1e-2), digits, reporter)
    assert result.state == TrialState.COMPLETE and result.epochs_run == 3
    assert [r.epoch for r in reporter.reports] == [1, 2, 3]
    assert result.value == max(r.value for r in reporter.reports)
    assert result.value > 0.5                      # it learned something in 3 epochs
    m = result.metrics
    assert m["accuracy"] == pytest.approx(result.value, abs=1e-6)
    assert len(m["confusion_matrix"]) == 10 and sum(map(sum, m["confusion_matrix"])) == len(digits.y_val)
    assert 0 < m["macro_f1"] <= 1 and m["param_count"] > 0


def test_prune_stops_training(digits: data.Arrays) -> None:
    reporter = ListReporter(prune_at=2)
    result = train_trial(_spec(epochs=6), digits, reporter)
    assert result.state == TrialState.PRUNED and result.epochs_run == 2
    assert len(reporter.reports) == 2 and "pruned after epoch 2" in result.reason


def test_nan_loss_stops_as_diverged(digits: data.Arrays) -> None:
    poisoned = data.Arrays(digits.x_train * np.float32(1e38), digits.y_train, digits.x_val, digits.y_val,
                           digits.class_names)
    result = train_trial(_spec(epochs=3, learning_rate=10.0, optimizer="sgd"), poisoned, ListReporter())
    assert result.state == TrialState.PRUNED and result.reason.startswith("diverged")
    assert result.epochs_run == 1


def test_same_seed_same_result(digits: data.Arrays) -> None:
    a = train_trial(_spec(epochs=2), digits, ListReporter())
    b = train_trial(_spec(epochs=2), digits, ListReporter())
    assert a.value == pytest.approx(b.value, abs=0.02)


def test_augmentation_layers_follow_strength_and_flip() -> None:
    from workers import augment

    params = {**PARAMETER_DEFAULTS, "width": 8}
    names = lambda layers: [type(layer).__name__ for layer in layers]
    assert augment.layers(0.0, flip=False) == []
    assert "RandomFlip" not in names(augment.layers(0.5, flip=False))
    assert names(augment.layers(0.5, flip=True))[0] == "RandomFlip"
    model = models.build(params, (8, 8, 1), 10, augment.layers(0.5, flip=False))
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast"} <= kinds
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    assert np.allclose(model(x, training=False), model(x, training=False))   # no augmentation at evaluation


def test_resumes_from_a_checkpoint_with_continuous_epochs(digits: data.Arrays) -> None:
    from workers import checkpoint

    first = ListReporter()
    whole = train_trial(_spec(epochs=2, learning_rate=1e-2), digits, first)
    assert whole.state == TrialState.COMPLETE and all(r.checkpoint for r in first.reports)
    saved = checkpoint.unpack(first.reports[-1].checkpoint)
    assert saved.epoch == 2 and set(saved.values) == {1, 2} and len(saved.optimizer) > 0
    assert int(saved.optimizer[0]) > 0, "the optimizer's step counter is part of the state"

    second = ListReporter()
    spec = TrialSpec(number=0, params={**PARAMETER_DEFAULTS, "width": 8, "learning_rate": 1e-2}, epochs=4, seed=1,
                     checkpoint=first.reports[-1].checkpoint)
    resumed = train_trial(spec, digits, second)
    assert [r.epoch for r in second.reports] == [3, 4]
    assert resumed.epochs_run == 4 and resumed.metrics["start_epoch"] == 2
    assert resumed.value == max([r.value for r in first.reports] + [r.value for r in second.reports])
    assert resumed.value >= whole.value


def test_checkpoint_of_another_model_is_refused(digits: data.Arrays) -> None:
    first = ListReporter()
    train_trial(_spec(epochs=1), digits, first)
    spec = TrialSpec(number=0, params={**PARAMETER_DEFAULTS, "width": 8, "optimizer": "sgd"}, epochs=2, seed=1,
                     checkpoint=first.reports[-1].checkpoint)
    with pytest.raises(ValueError, match="optimizer variables"):
        train_trial(spec, digits, ListReporter())


def test_deterministic_training_repeats_values_exactly(digits: data.Arrays) -> None:
    spec = TrialSpec(number=0, params={**PARAMETER_DEFAULTS, "width": 8, "augment": 0.3}, epochs=2, seed=5,
                     deterministic=True)
    a, b = ListReporter(), ListReporter()
    train_trial(spec, digits, a)
    train_trial(spec, digits, b)
    assert [r.value for r in a.reports] == [r.value for r in b.reports]
    assert [r.logs["loss"] for r in a.reports] == [r.logs["loss"] for r in b.reports]


def test_balancing_raises_macro_f1_on_an_imbalanced_subset(digits: data.Arrays) -> None:
    """Class 0 cut to 10% of its training images: class weights and oversampling both beat doing nothing."""
    zeros = np.flatnonzero(digits.y_train == 0)
    keep = np.ones(len(digits.y_train), bool)
    keep[zeros[len(zeros) // 10:]] = False
    imbalanced = data.Arrays(digits.x_train[keep], digits.y_train[keep], digits.x_val, digits.y_val,
                             digits.class_names)
    assert np.bincount(imbalanced.y_train)[0] * 8 < np.bincount(imbalanced.y_train)[1:].min()
    found = {}
    for setting in ({}, {"class_weight": "balanced"}, {"sampling": "oversample"}):
        # 5 epochs at 3e-3: at 3 epochs and 1e-2 the last epoch's BatchNorm noise can swamp the effect
        # (measured over seeds 1-3: balancing wins by 0.05-0.11 macro F1 here)
        spec = _spec(epochs=5, learning_rate=3e-3, width=8, **setting)
        metrics = train_trial(spec, imbalanced, ListReporter()).metrics
        found[next(iter(setting.values()), "none")] = (metrics["macro_f1"], metrics["per_class_recall"][0])
    assert found["balanced"][0] > found["none"][0] and found["oversample"][0] > found["none"][0], found
    assert found["balanced"][1] > found["none"][1] and found["oversample"][1] > found["none"][1], found


def test_class_weights_and_oversampling_arithmetic() -> None:
    from workers.data import class_weights, oversample

    y = np.array([0] * 10 + [1] * 30 + [2] * 60)
    w = class_weights(y, 4)
    assert w[0] == pytest.approx(100 / 30) and w[2] == pytest.approx(100 / 180) and w[3] == 1.0
    x = np.arange(100)
    xo, yo = oversample(x, y, seed=0)
    assert np.bincount(yo).tolist() == [60, 60, 60] and set(xo[yo == 0]) == set(range(10))


@pytest.mark.parametrize("knobs", [
    {"batchnorm": False, "lr_schedule": "cosine"},
    {"label_smoothing": 0.1, "lr_schedule": "plateau", "class_weight": "balanced"},
])
def test_regularisation_and_schedule_knobs_train(digits: data.Arrays, knobs: dict) -> None:
    reporter = ListReporter()
    result = train_trial(_spec(epochs=3, learning_rate=1e-2, width=8, **knobs), digits, reporter)
    assert result.state == TrialState.COMPLETE and [r.epoch for r in reporter.reports] == [1, 2, 3]
    assert result.value > 0.5 and result.metrics["latency_ms_per_image"] > 0


def test_batchnorm_off_builds_no_batchnorm_layers() -> None:
    on = models.build({**PARAMETER_DEFAULTS, "width": 8}, (8, 8, 1), 10)
    off = models.build({**PARAMETER_DEFAULTS, "width": 8, "batchnorm": False}, (8, 8, 1), 10)
    kinds = lambda m: {type(layer).__name__ for layer in m.layers}  # noqa: E731
    assert "BatchNormalization" in kinds(on) and "BatchNormalization" not in kinds(off)


def test_early_stopping_ends_a_trial_that_stopped_improving(digits: data.Arrays) -> None:
    # A learning rate of 0 and no BatchNorm: the metric cannot improve after epoch 1.
    reporter = ListReporter()
    result = train_trial(_spec(epochs=6, learning_rate=0.0, batchnorm=False, early_stopping=2), digits, reporter)
    assert result.state == TrialState.COMPLETE and result.epochs_run == 3
    assert result.reason.startswith("early stopped after epoch 3")


def test_mixup_and_random_erasing_train(digits: data.Arrays) -> None:
    reporter = ListReporter()
    result = train_trial(_spec(epochs=3, learning_rate=1e-2, width=8, mixup_alpha=0.2, random_erasing=0.5,
                               augment=0.3), digits, reporter)
    assert result.state == TrialState.COMPLETE and [r.epoch for r in reporter.reports] == [1, 2, 3]
    assert result.value > 0.5


def test_mixup_blends_images_and_labels_with_one_weight() -> None:
    import tensorflow as tf

    from workers.augment import mixup

    tf.random.set_seed(0)
    images = tf.constant(np.stack([np.full((2, 2, 1), v, np.float32) for v in (0.0, 1.0, 0.5, 0.25)]))
    labels = tf.one_hot([0, 1, 2, 3], 4)
    mixed_images, mixed_labels = mixup(images, labels, 0.4)
    values, mixed_labels, mixed_images = [0.0, 1.0, 0.5, 0.25], mixed_labels.numpy(), mixed_images.numpy()
    weights = set()
    for i in range(4):
        row = mixed_labels[i]
        assert np.isclose(row.sum(), 1.0) and np.count_nonzero(row > 1e-6) <= 2   # itself and one partner
        partner = int(np.argmax(np.where(np.arange(4) == i, -1, row))) if row[i] < 1 - 1e-6 else i
        own = row[i]
        if partner != i:
            weights.add(round(float(own), 5))
        # the image is blended with the same weight as its label
        assert np.allclose(mixed_images[i], own * values[i] + (1 - own) * values[partner], atol=1e-6)
    assert len(weights) <= 1                                  # one weight per batch


def test_cross_validation_reports_the_running_mean_over_folds() -> None:
    folded = data.load({"name": "digits", "test_fraction": 0.1, "folds": 3, "max_images": 450}, seed=0)
    assert folded.describe()["folds"] == 3 and len(folded.y_train) == 405
    assert sorted(np.bincount(folded.fold)) == [135, 135, 135]
    assert set(map(tuple, folded.x_val.reshape(len(folded.x_val), -1))) <= set(
        map(tuple, folded.x_train.reshape(len(folded.x_train), -1)))      # x_val is the last fold
    reporter = ListReporter()
    spec = TrialSpec(number=0, params={**PARAMETER_DEFAULTS, "width": 8, "learning_rate": 1e-2}, epochs=2, seed=1,
                     folds=3)
    result = train_trial(spec, folded.training_only(), reporter)
    assert result.state == TrialState.COMPLETE and result.epochs_run == 6
    assert [r.epoch for r in reporter.reports] == [1, 2, 3, 4, 5, 6]
    assert [r.logs["fold"] for r in reporter.reports] == [1, 1, 2, 2, 3, 3]
    folds = result.metrics["fold_values"]
    assert folds == pytest.approx([max(r.logs["fold_value"] for r in reporter.reports if r.logs["fold"] == f)
                                   for f in (1, 2, 3)], abs=1e-6)
    assert result.value == pytest.approx(np.mean(folds), abs=1e-5)
    assert reporter.reports[-1].value == pytest.approx(result.value)
    assert reporter.reports[3].value == pytest.approx((folds[0] + max(reporter.reports[2].logs["fold_value"],
                                                                       reporter.reports[3].logs["fold_value"])) / 2)
    # out-of-fold metrics: every training image predicted once, by the model that did not train on it
    assert sum(map(sum, result.metrics["confusion_matrix"])) == 405


def test_cross_validation_stops_at_a_prune() -> None:
    folded = data.load({"name": "digits", "test_fraction": 0.1, "folds": 3, "max_images": 300}, seed=0)
    reporter = ListReporter(prune_at=3)
    spec = TrialSpec(number=0, params={**PARAMETER_DEFAULTS, "width": 8}, epochs=2, seed=1, folds=3)
    result = train_trial(spec, folded.training_only(), reporter)
    assert result.state == TrialState.PRUNED and result.epochs_run == 3 and result.reason.startswith("fold 2/3")


@pytest.mark.parametrize("architecture", ["mobilenet_v2", "efficientnet_b0"])
def test_applications_take_small_grey_images(architecture: str) -> None:
    model = models.build({**PARAMETER_DEFAULTS, "architecture": architecture}, (8, 8, 1), 10)
    base = models.backbone(model)
    assert base is not None and base.input_shape == (None, 32, 32, 3)
    assert model.predict(np.zeros((2, 8, 8, 1), "float32"), verbose=0).shape == (2, 10)
    import keras

    assert {layer.momentum for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)} == {
        models.BN_MOMENTUM}


def test_transfer_phases_freeze_then_fine_tune_the_top_layers(digits: data.Arrays) -> None:
    import keras

    params = {**PARAMETER_DEFAULTS, "architecture": "mobilenet_v2", "unfreeze_layers": 10}
    model = models.build(params, digits.input_shape, 10)
    base = models.backbone(model)
    models.set_phase(model, params, "frozen")
    assert not base.trainable_weights and model.trainable_weights       # only the head trains
    models.set_phase(model, params, "fine_tune")
    trainable = [layer for layer in base.layers if layer.trainable and layer.weights]
    assert trainable and all(base.layers.index(layer) >= len(base.layers) - 10 for layer in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    models.set_phase(model, params, "full")
    assert all(layer.trainable for layer in base.layers)


def test_imagenet_weights_unreachable_is_one_clear_error() -> None:
    import os

    if os.path.exists(os.path.expanduser("~/.keras/models/efficientnetb0_notop.h5")):
        pytest.skip("this machine has the ImageNet file cached, so nothing is downloaded")
    with pytest.raises(ValueError, match="efficientnet_b0: ImageNet weights could not be downloaded .*weights: none"):
        models.build({**PARAMETER_DEFAULTS, "architecture": "efficientnet_b0", "weights": "imagenet"}, (8, 8, 1), 10)


def test_worker_that_cannot_see_the_folder_fails_the_trial_with_one_clear_reason(tmp_path) -> None:
    from workers.remote import TrainerWorker

    ref = data.FolderRef({"name": "folder", "path": str(tmp_path / "not-mounted"), "val_fraction": 0.2}, 0)
    result = TrainerWorker(1).train(_spec(epochs=1), ref, broker=None)
    assert result.state == TrialState.FAILED and result.epochs_run == 0
    assert result.failure == Failure.DATASET
    assert result.reason.startswith("dataset not readable on this worker: this worker (") and "not-mounted" in result.reason


@pytest.mark.parametrize("options", [{"mixed_precision": True}, {"jit_compile": True, "steps_per_execution": 4}])
def test_speed_options_train_and_leave_the_worker_as_it_was(digits: data.Arrays, options: dict) -> None:
    import keras

    spec = TrialSpec(number=0, params={**PARAMETER_DEFAULTS, "width": 8, "learning_rate": 1e-2}, epochs=2, seed=1,
                     **options)
    reporter = ListReporter()
    result = train_trial(spec, digits, reporter)
    assert result.state == TrialState.COMPLETE and len(reporter.reports) == 2 and result.value > 0.3
    assert keras.mixed_precision.global_policy().name == "float32"     # the next trial starts clean


def test_mixed_precision_computes_in_half_precision_with_float32_outputs(digits: data.Arrays) -> None:
    import keras

    from workers.trainer import mixed_policy

    keras.mixed_precision.set_global_policy(mixed_policy())
    try:
        model = models.build({**PARAMETER_DEFAULTS, "width": 8}, digits.input_shape, 10)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    half = "float16" if mixed_policy() == "mixed_float16" else "bfloat16"      # GPU / CPU
    assert conv.compute_dtype == half and conv.kernel.dtype == "float32"
    assert model.output.dtype == "float32"


def test_a_retry_from_the_last_epochs_checkpoint_completes_with_its_best_value(digits: data.Arrays) -> None:
    """A trial stopped after its final epoch (Ctrl-C at the end): the retry has nothing to train, and completes."""
    first = ListReporter()
    whole = train_trial(_spec(epochs=2, learning_rate=1e-2), digits, first)
    spec = TrialSpec(number=0, params={**PARAMETER_DEFAULTS, "width": 8, "learning_rate": 1e-2}, epochs=2, seed=1,
                     checkpoint=first.reports[-1].checkpoint)
    again = ListReporter()
    resumed = train_trial(spec, digits, again)
    assert resumed.state == TrialState.COMPLETE and again.reports == []
    assert resumed.value == whole.value and resumed.metrics["start_epoch"] == 2


def test_macro_f1_is_the_metric_every_epoch_when_asked(digits: data.Arrays) -> None:
    """metric: macro_f1 reports the validation macro F1 after each epoch; the value is the best epoch's, and
    it is the same F1 the final measurement computes on that epoch's weights."""
    reporter = ListReporter()
    spec = TrialSpec(number=0, params={**PARAMETER_DEFAULTS, "width": 8, "learning_rate": 1e-2}, epochs=3, seed=1,
                     metric="macro_f1")
    result = train_trial(spec, digits, reporter)
    values = [r.value for r in reporter.reports]
    assert [r.epoch for r in reporter.reports] == [1, 2, 3] and all(r.logs["macro_f1"] == r.value
                                                                    for r in reporter.reports)
    assert all(0 <= v <= 1 for v in values) and result.value == max(values)
    assert result.metrics["macro_f1"] == pytest.approx(result.value, abs=1e-6)
    assert result.metrics["macro_f1"] != result.metrics["accuracy"]     # not accuracy under another name


def test_a_model_over_a_size_limit_is_rejected_before_its_first_epoch(digits: data.Arrays) -> None:
    from workers.spec import Bound

    reporter = ListReporter()
    spec = TrialSpec(number=0, params={**PARAMETER_DEFAULTS, "width": 8}, epochs=3, seed=1,
                     limits=(Bound("param_count", high=100),))
    result = train_trial(spec, digits, reporter)
    assert result.state == TrialState.PRUNED and result.epochs_run == 0 and not reporter.reports
    assert result.reason.startswith("rejected before training: param_count ") and "breaks max 100" in result.reason
    assert result.metrics["param_count"] > 100 and result.metrics["model_bytes"] >= 4 * result.metrics["param_count"]
