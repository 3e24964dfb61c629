"""train_trial(spec, data, reporter) -> result: plain Keras ``model.fit`` and one callback.

The callback reports the metric after every epoch and stops training when the
coordinator answers PRUNE; it adds one small message per epoch, nothing per
batch. A NaN or infinite loss stops the trial as "diverged".
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import numpy as np

from workers import augment, metrics, models
from workers import checkpoint as ckpt
from workers.data import Arrays
from workers.spec import Decision, EpochReport, Reporter, TrialResult, TrialSpec, TrialState


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


def _report_callback(spec: TrialSpec, reporter: Reporter, maximize: bool) -> Any:
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
            logs = {k: float(v) for k, v in (logs or {}).items()}
            self.epochs_run = epoch + 1
            loss = logs.get("loss", math.nan)
            if not math.isfinite(loss):
                self.state, self.reason = TrialState.PRUNED, f"diverged: loss became {loss} in epoch {epoch + 1}"
                self.model.stop_training = self.stopped = True
                return
            value = logs[spec.metric]
            weights = self.model.get_weights()
            if self.best is None or (value > self.best if maximize else value < self.best):
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
        maximize = self.spec.metric != "val_loss"
        if self.best is None or (report.value > self.best if maximize else report.value < self.best):
            self.best = report.value
        mean = (sum(self.done) + self.best) / (len(self.done) + 1)
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
    k = int(data.fold.max()) + 1
    done: list[float] = []
    y_true, y_pred = [], []
    epochs_run, seconds, found = 0, 0.0, {}
    for fold in range(k):
        part = data.split(fold)
        inner = replace(spec, folds=0, checkpoint=None, seed=spec.seed + fold)
        result, predicted = _train_split(inner, part, _FoldReporter(reporter, spec, fold, done))
        epochs_run = fold * spec.epochs + result.epochs_run
        if result.value is None or result.state != TrialState.COMPLETE:
            mean = None if result.value is None else (sum(done) + result.value) / (len(done) + 1)
            return TrialResult(spec.number, result.state, mean, epochs_run,
                               f"fold {fold + 1}/{k}: {result.reason}" if result.reason else "")
        done.append(result.value)
        y_true.append(part.y_val)
        y_pred.append(predicted)
        found = result.metrics
        seconds += found.get("train_seconds", 0.0)
    out = metrics.classification(np.concatenate(y_true), np.concatenate(y_pred), data.n_classes)
    out.update({key: found[key] for key in ("param_count", "latency_ms_per_image") if key in found})
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
                         augment.layers(params["augment"], spec.flip, seed=spec.seed, erasing=params["random_erasing"]))
    x, y = data.x_train, data.y_train
    if params["sampling"] == "oversample":
        x, y = oversample(x, y, spec.seed)
    smoothing, alpha = params["label_smoothing"], params["mixup_alpha"]
    one_hot = smoothing > 0 or alpha > 0       # smoothed and mixed targets are distributions, not indices
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=smoothing) if one_hot
            else keras.losses.SparseCategoricalCrossentropy())
    maximize = spec.metric != "val_loss"
    callback = _report_callback(spec, reporter, maximize)
    labels, y_val = y, data.y_val
    if one_hot:
        y, y_val = (keras.utils.to_categorical(v, data.n_classes) for v in (y, y_val))
    weights = class_weights(labels, data.n_classes) if params["class_weight"] == "balanced" else None
    train = _batches(x, y, params["batch_size"], alpha, spec.seed)
    steps_per_epoch = (math.ceil(len(y) / params["batch_size"]) if keras.backend.backend() == "tensorflow"
                       else len(train))      # the PyDataset drops the last, smaller batch
    phases = _phases(spec.epochs, params["freeze_epochs"] if models.backbone(model) is not None else 0)
    start = 0
    if spec.checkpoint:
        start = ckpt.read_meta(spec.checkpoint)["epoch"]
    if spec.checkpoint and start >= spec.epochs:     # interrupted after its last epoch: nothing left to train
        _resume(model, spec.checkpoint, callback, optimizer=False)
    started = time.perf_counter()
    for first, last, phase in phases:
        if last <= start:
            continue
        models.set_phase(model, params, phase)
        factor = params["fine_tune_lr_factor"] if first > 0 else 1.0     # fine-tuning runs at a lower rate
        model.compile(optimizer=make_optimizer(dict(params, learning_rate=params["learning_rate"] * factor),
                                               (last - first) * steps_per_epoch),
                      loss=loss, metrics=["accuracy"],
                      jit_compile=spec.jit_compile or keras.backend.backend() == "jax",   # JAX: always jitted
                      steps_per_execution=spec.steps_per_execution)
        if spec.checkpoint and start >= first:        # the optimizer state only within the phase that saved it
            _resume(model, spec.checkpoint, callback, optimizer=start > first)
        callbacks = [callback]
        if params["lr_schedule"] == "plateau":     # before the report callback's stop decisions matter
            callbacks.insert(0, keras.callbacks.ReduceLROnPlateau(monitor=spec.metric, factor=0.5, patience=2,
                                                                  mode="max" if maximize else "min", verbose=0))
        model.fit(train, epochs=last, initial_epoch=max(first, start), class_weight=weights,
                  validation_data=(data.x_val, y_val), callbacks=callbacks, verbose=0, shuffle=False)
        if callback.stopped:
            break
    seconds = time.perf_counter() - started
    callback.epochs_run = max(callback.epochs_run, start)
    if callback.best_weights is None:
        return TrialResult(spec.number, callback.state, None, callback.epochs_run, callback.reason), None
    model.set_weights(callback.best_weights)
    model.predict(data.x_val, batch_size=256, verbose=0)   # warm-up (JAX compiles per batch shape): inference only
    timed = time.perf_counter()
    predicted = np.argmax(model.predict(data.x_val, batch_size=256, verbose=0), axis=1)
    latency = (time.perf_counter() - timed) / max(len(data.x_val), 1)
    found = metrics.classification(data.y_val, predicted, data.n_classes)
    found.update(param_count=int(model.count_params()), train_seconds=round(seconds, 3),
                 seconds_per_epoch=round(seconds / max(callback.epochs_run, 1), 4),
                 latency_ms_per_image=round(1000 * latency, 4), epoch_seconds=callback.epoch_seconds)
    found.update(start_epoch=start)
    return TrialResult(spec.number, callback.state, callback.best, callback.epochs_run, callback.reason, found), predicted


def _batches(x: np.ndarray, y: np.ndarray, batch_size: int, alpha: float, seed: int) -> Any:
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


def _phases(epochs: int, freeze_epochs: int) -> list[tuple[int, int, str]]:
    """(first epoch, end epoch, phase for models.set_phase): transfer learning trains frozen, then fine-tunes."""
    if freeze_epochs <= 0:
        return [(0, epochs, "full")]
    if freeze_epochs >= epochs:
        return [(0, epochs, "frozen")]
    return [(0, freeze_epochs, "frozen"), (freeze_epochs, epochs, "fine_tune")]


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
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    if len(optimizer.variables) != len(state.optimizer):
        raise ValueError(f"checkpoint holds {len(state.optimizer)} optimizer variables, the model has "
                         f"{len(optimizer.variables)}: it was saved by another configuration")
    for variable, value in zip(optimizer.variables, state.optimizer):
        variable.assign(value)
    return state.epoch
