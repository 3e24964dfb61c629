"""train_trial(spec, data, reporter) -> result: plain Keras ``model.fit`` and two callbacks.

Three stages: inputs (the model, and the pipeline from ``workers/data.py``),
fit phases (transfer learning trains frozen, then fine-tunes; a retry resumes
from its checkpoint), and measurement of the best epoch's weights. Each epoch
the first callback validates (BatchNorm statistics re-estimated first, so the
value is the weights' from epoch 1: ``workers/precise_bn.py``) and the last
reports the metric and stops training when the coordinator answers PRUNE; one
small message per epoch, nothing per batch. A NaN or infinite loss stops the
trial as "diverged". Which epoch is best follows ``spec.maximize``, decided
once in the sweep's config.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import numpy as np

from workers import augment, metrics, models, precise_bn, usermodel
from workers import checkpoint as ckpt
from workers.data import Arrays, TrainingInputs, training_inputs
from workers.spec import SIZES, Bound, Decision, EpochReport, Reporter, TrialResult, TrialSpec, TrialState, better


def configure_threads(threads: int) -> None:
    """TensorFlow's thread pools for this process: before its first op (a trial slot, or a rerun).

    Under the JAX backend there is nothing to set: XLA sizes its own thread pool.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:   # TensorFlow already started its pools in this process
        pass


def make_optimizer(params: dict[str, Any], total_steps: int = 0) -> Any:
    """The optimizer; ``cosine`` decays its rate to 0 over ``total_steps`` (the whole trial)."""
    import keras

    name, lr = params["optimizer"], params["learning_rate"]
    if params.get("lr_schedule") == "cosine" and total_steps > 0:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps)
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=params["weight_decay"])
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=params["momentum"])
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr, momentum=params["momentum"])
    raise ValueError(f"unknown optimizer {name!r}")


def _report_callback(spec: TrialSpec, reporter: Reporter) -> Any:
    import keras

    class ReportCallback(keras.callbacks.Callback):
        """Reports each epoch; remembers the best weights; stops on PRUNE or divergence."""

        def __init__(self) -> None:
            super().__init__()
            self.best: float | None = None
            self.best_epoch = 0
            self.best_weights: list[np.ndarray] | None = None
            self.values: dict[int, float] = {}
            self.epochs_run = 0
            self.state = TrialState.COMPLETE
            self.reason = ""
            self.stopped = False      # pruned, diverged or early stopped: no further phase
            self.epoch_seconds: list[float] = []    # each epoch, training, validation and report included
            self._mark = 0.0

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self._mark = time.perf_counter()

        def _lap(self) -> None:
            now = time.perf_counter()
            self.epoch_seconds.append(round(now - self._mark, 4))
            self._mark = now

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            try:
                self._epoch_end(epoch, logs)
            finally:
                self._lap()

        def _epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = {k: v if isinstance(v, int) else float(v) for k, v in (logs or {}).items()}   # counts stay int
            self.epochs_run = epoch + 1
            loss = logs.get("loss", math.nan)
            if not math.isfinite(loss):
                self.state, self.reason = TrialState.PRUNED, f"diverged: loss became {loss} in epoch {epoch + 1}"
                self.model.stop_training = self.stopped = True
                return
            value = logs[spec.metric]
            weights = self.model.get_weights()
            if better(value, self.best, spec.maximize):
                self.best, self.best_epoch, self.best_weights = value, epoch + 1, weights
            patience = spec.params.get("early_stopping", 0)
            self.values[epoch + 1] = value
            state = None
            if spec.save_checkpoints:
                state = ckpt.pack(ckpt.Checkpoint(
                    epoch + 1, weights, [np.asarray(v) for v in self.model.optimizer.variables], self.best,
                    self.best_epoch, None if self.best_epoch == epoch + 1 else self.best_weights, self.values))
            decision = reporter.report(EpochReport(spec.number, epoch + 1, value, logs, state))
            if decision == Decision.PRUNE:
                self.state = TrialState.PRUNED
                self.reason = f"pruned after epoch {epoch + 1} ({spec.metric}={value:.4f})"
                self.model.stop_training = self.stopped = True
            elif patience and epoch + 1 - self.best_epoch >= patience and epoch + 1 < spec.epochs:
                self.reason = (f"early stopped after epoch {epoch + 1}: no better {spec.metric} for {patience} "
                               f"epochs (best at epoch {self.best_epoch})")
                self.model.stop_training = self.stopped = True

    return ReportCallback()


def train_trial(spec: TrialSpec, data: Arrays, reporter: Reporter) -> TrialResult:
    """Train one configuration; the value is the best epoch's metric, and the kept weights are that epoch's."""
    import keras

    if spec.mixed_precision:            # the worker is long-lived: the policy is set per trial and put back
        keras.mixed_precision.set_global_policy(mixed_policy())
    try:
        if spec.folds and data.fold is not None:
            return _cross_validate(spec, data, reporter)
        return _train_split(spec, data, reporter)[0]
    finally:
        keras.mixed_precision.set_global_policy("float32")


def mixed_policy() -> str:
    """float16 compute where the GPU has tensor cores for it, bfloat16 on a CPU (float16 is slow there)."""
    return "mixed_float16" if has_gpu() else "mixed_bfloat16"


def has_gpu() -> bool:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


class _FoldReporter:
    """Fold i's epochs become steps i * epochs + epoch, valued at the running mean over the folds so far.

    A fold's value is its best epoch's so far, so the pruner compares trials
    on the same footing at every step: the mean of the folds done and the
    current fold's best.
    """

    def __init__(self, reporter: Reporter, spec: TrialSpec, fold: int, done: list[float]) -> None:
        self.reporter, self.spec, self.fold, self.done = reporter, spec, fold, done
        self.best: float | None = None

    def report(self, report: EpochReport) -> Decision:
        best = report.value if self.best is None or better(report.value, self.best, self.spec.maximize) else self.best
        self.best = best
        mean = (sum(self.done) + best) / (len(self.done) + 1)
        logs = dict(report.logs, fold=self.fold + 1, fold_value=report.value)
        return self.reporter.report(EpochReport(self.spec.number, self.fold * self.spec.epochs + report.epoch,
                                                mean, logs, report.checkpoint))


def _cross_validate(spec: TrialSpec, data: Arrays, reporter: Reporter) -> TrialResult:
    """k models in turn, one per fold; the value is the mean of their best epochs' values.

    A retry starts over (the coordinator gives it no checkpoint); the kept
    checkpoint is the last fold's, the model `sweeps export` serves.
    Metrics are out-of-fold: every training image predicted by the model
    that did not train on it.
    """
    assert data.fold is not None, "cross-validation needs the folds of dataset.folds"
    k = int(data.fold.max()) + 1
    done: list[float] = []
    y_true: list[np.ndarray] = []
    y_pred: list[np.ndarray] = []
    epochs_run, seconds, found = 0, 0.0, {}
    for fold in range(k):
        part = data.split(fold)
        inner = replace(spec, folds=0, checkpoint=None, seed=spec.seed + fold)
        result, predicted = _train_split(inner, part, _FoldReporter(reporter, spec, fold, done))
        epochs_run = fold * spec.epochs + result.epochs_run
        if result.value is None or result.state != TrialState.COMPLETE:
            mean = None if result.value is None else (sum(done) + result.value) / (len(done) + 1)
            return TrialResult(spec.number, result.state, mean, epochs_run,
                               f"fold {fold + 1}/{k}: {result.reason}" if result.reason else "",
                               {key: result.metrics[key] for key in SIZES if key in result.metrics})
        assert predicted is not None            # a complete fold was measured
        done.append(result.value)
        y_true.append(part.y_val)
        y_pred.append(predicted)
        found = result.metrics
        seconds += found.get("train_seconds", 0.0)
    out = metrics.classification(np.concatenate(y_true), np.concatenate(y_pred), data.n_classes)
    out.update({key: found[key] for key in (*SIZES, "latency_ms_per_image") if key in found})
    out.update(folds=k, fold_values=[round(v, 6) for v in done], start_epoch=0, train_seconds=round(seconds, 3),
               seconds_per_epoch=round(seconds / max(epochs_run, 1), 4))
    return TrialResult(spec.number, TrialState.COMPLETE, float(np.mean(done)), epochs_run, "", out)


def _train_split(spec: TrialSpec, data: Arrays, reporter: Reporter) -> tuple[TrialResult, np.ndarray | None]:
    """One model on one train / validation split; also its predictions on the validation images."""
    import keras

    keras.utils.set_random_seed(spec.seed)
    if spec.deterministic and keras.backend.backend() == "tensorflow":     # TensorFlow's switch; none for JAX
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    params = spec.params
    model = models.build(params, data.input_shape, data.n_classes,
                         augment.layers(params["augment"], spec.flip, seed=spec.seed, erasing=params["random_erasing"]),
                         builder=spec.model)
    size = usermodel.sizes(model)
    broken = [b for b in spec.limits if b.violation(size[b.measure]) > 0]
    if broken:        # known before the first epoch: not worth training
        return TrialResult(spec.number, TrialState.PRUNED, None, 0, "rejected before training: " + "; ".join(
            f"{b.measure} {size[b.measure]:,} breaks {_bound_text(b)}" for b in broken), dict(size)), None
    inputs = training_inputs(data, params, spec.seed)
    callback = _report_callback(spec, reporter)
    started = time.perf_counter()
    start = _fit(spec, model, inputs, callback, _validation_callback(spec, data, inputs))
    return _measure(spec, model, data, callback, start, time.perf_counter() - started, size)


def _bound_text(b: Bound) -> str:
    return " and ".join(f"{side} {v:,g}" for side, v in (("min", b.low), ("max", b.high)) if v is not None)


def _validation_callback(spec: TrialSpec, data: Arrays, inputs: TrainingInputs) -> Any:
    """Each epoch's validation, run before every other callback: BatchNorm statistics re-estimated on training
    images (``precise_bn``), then one predict of the validation images puts ``val_accuracy``, ``val_loss``
    (the compiled loss plus regularisation, as Keras's), ``macro_f1`` and ``val_classes_predicted`` into the
    epoch's logs, which the plateau schedule and the report read. Keras's own validation runs inside ``fit``
    before any callback, too early to re-estimate."""
    import keras

    batch_size, (x_val, targets) = spec.params["batch_size"], inputs.validation
    chosen = data.x_train[precise_bn.sample(len(data.x_train), batch_size, spec.seed)]
    loss = _loss(inputs.one_hot, spec.params["label_smoothing"])

    class EpochValidation(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.recalibrate = precise_bn.Recalibrator(self.model, batch_size)   # per phase: the layers that train

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if logs is None:
                return
            self.recalibrate(chosen)
            probabilities = self.model.predict(x_val, batch_size=256, verbose=0)
            predicted = np.argmax(probabilities, axis=1)
            found = metrics.classification(data.y_val, predicted, data.n_classes)
            penalty = sum(float(keras.ops.convert_to_numpy(term)) for term in self.model.losses)
            logs.update(val_loss=float(keras.ops.convert_to_numpy(loss(targets, probabilities))) + penalty,
                        val_accuracy=found["accuracy"], macro_f1=found["macro_f1"],
                        val_classes_predicted=int(np.unique(predicted).size))

    return EpochValidation()


def _fit(spec: TrialSpec, model: Any, inputs: TrainingInputs, callback: Any, validation: Any) -> int:
    """The fit phases from the checkpoint's epoch (0 without one); returns that epoch. ``validation`` runs
    before all other callbacks each epoch."""
    import keras

    params = spec.params
    start = ckpt.read_meta(spec.checkpoint)["epoch"] if spec.checkpoint else 0
    if spec.checkpoint and start >= spec.epochs:     # interrupted after its last epoch: nothing left to train
        _resume(model, spec.checkpoint, callback, optimizer=False)
    freeze = params["freeze_epochs"] if models.backbone(model) is not None else 0
    for first, last, phase in _phases(spec.epochs, freeze):
        if last <= start:
            continue
        models.set_phase(model, params, phase)
        factor = params["fine_tune_lr_factor"] if first > 0 else 1.0     # fine-tuning runs at a lower rate
        model.compile(optimizer=make_optimizer(dict(params, learning_rate=params["learning_rate"] * factor),
                                               (last - first) * inputs.steps_per_epoch),
                      loss=_loss(inputs.one_hot, params["label_smoothing"]), metrics=["accuracy"],
                      jit_compile=spec.jit_compile or keras.backend.backend() == "jax",   # JAX: always jitted
                      steps_per_execution=spec.steps_per_execution)
        if spec.checkpoint and start >= first:        # the optimizer state only within the phase that saved it
            _resume(model, spec.checkpoint, callback, optimizer=start > first)
        callbacks = [validation, callback]
        if params["lr_schedule"] == "plateau":     # before the report callback's stop decisions matter
            callbacks.insert(1, keras.callbacks.ReduceLROnPlateau(monitor=spec.metric, factor=0.5, patience=2,
                                                                  mode="max" if spec.maximize else "min", verbose=0))
        model.fit(inputs.train, epochs=last, initial_epoch=max(first, start), class_weight=inputs.class_weight,
                  callbacks=callbacks, verbose=0, shuffle=False)
        if callback.stopped:
            break
    return start


def _measure(spec: TrialSpec, model: Any, data: Arrays, callback: Any, start: int,
             seconds: float, size: dict[str, int]) -> tuple[TrialResult, np.ndarray | None]:
    """The best epoch's weights on the validation images: metrics, latency, and the predictions."""
    callback.epochs_run = max(callback.epochs_run, start)
    if callback.best_weights is None:
        return TrialResult(spec.number, callback.state, None, callback.epochs_run, callback.reason), None
    model.set_weights(callback.best_weights)
    model.predict(data.x_val, batch_size=256, verbose=0)   # warm-up (JAX compiles per batch shape): inference only
    timed = time.perf_counter()
    predicted = np.argmax(model.predict(data.x_val, batch_size=256, verbose=0), axis=1)
    latency = (time.perf_counter() - timed) / max(len(data.x_val), 1)
    found = metrics.classification(data.y_val, predicted, data.n_classes)
    found.update(size, train_seconds=round(seconds, 3),
                 seconds_per_epoch=round(seconds / max(callback.epochs_run, 1), 4),
                 latency_ms_per_image=round(1000 * latency, 4), epoch_seconds=callback.epoch_seconds,
                 start_epoch=start)
    return TrialResult(spec.number, callback.state, callback.best, callback.epochs_run, callback.reason, found), predicted


def _loss(one_hot: bool, smoothing: float) -> Any:
    """Smoothed and mixed targets are distributions (one-hot), plain ones class indices."""
    import keras

    if one_hot:
        return keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def _phases(epochs: int, freeze_epochs: int) -> list[tuple[int, int, str]]:
    """(first epoch, end epoch, phase for models.set_phase): transfer learning trains frozen, then fine-tunes."""
    if freeze_epochs <= 0:
        return [(0, epochs, "full")]
    if freeze_epochs >= epochs:
        return [(0, epochs, "frozen")]
    return [(0, freeze_epochs, "frozen"), (freeze_epochs, epochs, "fine_tune")]


def _resume(model: Any, data: bytes, callback: Any, optimizer: bool = True) -> int:
    """Load weights, optimizer state and best-so-far from a checkpoint; returns the epochs already done."""
    state = ckpt.unpack(data)
    model.set_weights(state.weights)
    callback.best, callback.best_epoch = state.best, state.best_epoch
    callback.best_weights = state.best_weights if state.best_weights is not None else state.weights
    callback.values = dict(state.values)
    callback.epochs_run = state.epoch
    if not optimizer:
        return state.epoch
    keras_optimizer = model.optimizer
    keras_optimizer.build(model.trainable_variables)
    if len(keras_optimizer.variables) != len(state.optimizer):
        raise ValueError(f"checkpoint holds {len(state.optimizer)} optimizer variables, the model has "
                         f"{len(keras_optimizer.variables)}: it was saved by another configuration")
    for variable, value in zip(keras_optimizer.variables, state.optimizer):
        variable.assign(value)
    return state.epoch
