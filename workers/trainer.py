"""train_trial(spec, data, reporter) -> result: plain Keras ``model.fit`` and one callback.

The callback reports the metric after every epoch and stops training when the
coordinator answers PRUNE; it adds one small message per epoch, nothing per
batch. A NaN or infinite loss stops the trial as "diverged".
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from workers import augment, metrics, models
from workers import checkpoint as ckpt
from workers.data import Arrays
from workers.spec import Decision, EpochReport, Reporter, TrialResult, TrialSpec, TrialState


def configure_threads(threads: int) -> None:
    """TensorFlow's thread pools for this process: before its first op (a trial slot, or a rerun)."""
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

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = {k: float(v) for k, v in (logs or {}).items()}
            self.epochs_run = epoch + 1
            loss = logs.get("loss", math.nan)
            if not math.isfinite(loss):
                self.state, self.reason = TrialState.PRUNED, f"diverged: loss became {loss} in epoch {epoch + 1}"
                self.model.stop_training = True
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
                self.model.stop_training = True
            elif patience and epoch + 1 - self.best_epoch >= patience and epoch + 1 < spec.epochs:
                self.reason = (f"early stopped after epoch {epoch + 1}: no better {spec.metric} for {patience} "
                               f"epochs (best at epoch {self.best_epoch})")
                self.model.stop_training = True

    return ReportCallback()


def train_trial(spec: TrialSpec, data: Arrays, reporter: Reporter) -> TrialResult:
    """Train one configuration; the value is the best epoch's metric, and the kept weights are that epoch's."""
    import keras

    keras.utils.set_random_seed(spec.seed)
    if spec.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    params = spec.params
    model = models.build(params, data.input_shape, data.n_classes,
                         augment.layers(params["augment"], spec.flip, seed=spec.seed, erasing=params["random_erasing"]))
    x, y = data.x_train, data.y_train
    if params["sampling"] == "oversample":
        x, y = oversample(x, y, spec.seed)
    steps = spec.epochs * math.ceil(len(y) / params["batch_size"])
    smoothing, alpha = params["label_smoothing"], params["mixup_alpha"]
    one_hot = smoothing > 0 or alpha > 0       # smoothed and mixed targets are distributions, not indices
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=smoothing) if one_hot
            else keras.losses.SparseCategoricalCrossentropy())
    model.compile(optimizer=make_optimizer(params, steps), loss=loss, metrics=["accuracy"])
    maximize = spec.metric != "val_loss"
    callback = _report_callback(spec, reporter, maximize)
    callbacks = [callback]
    if params["lr_schedule"] == "plateau":     # before the report callback's stop decisions matter
        callbacks.insert(0, keras.callbacks.ReduceLROnPlateau(monitor=spec.metric, factor=0.5, patience=2,
                                                              mode="max" if maximize else "min", verbose=0))
    start = _resume(model, spec.checkpoint, callback) if spec.checkpoint else 0
    labels, y_val = y, data.y_val
    if one_hot:
        y, y_val = (keras.utils.to_categorical(v, data.n_classes) for v in (y, y_val))
    weights = class_weights(labels, data.n_classes) if params["class_weight"] == "balanced" else None
    started = time.perf_counter()
    if alpha > 0:      # mixup mixes whole batches: a tf.data pipeline, shuffled each epoch, prefetched
        model.fit(_mixup_batches(x, y, params["batch_size"], alpha, spec.seed), epochs=spec.epochs,
                  initial_epoch=start, class_weight=weights, validation_data=(data.x_val, y_val),
                  callbacks=callbacks, verbose=0)
    else:
        model.fit(x, y, batch_size=params["batch_size"], epochs=spec.epochs, initial_epoch=start,
                  class_weight=weights, validation_data=(data.x_val, y_val), callbacks=callbacks, verbose=0,
                  shuffle=True)
    seconds = time.perf_counter() - started
    callback.epochs_run = max(callback.epochs_run, start)
    if callback.best_weights is None:
        return TrialResult(spec.number, callback.state, None, callback.epochs_run, callback.reason)
    model.set_weights(callback.best_weights)
    model.predict(data.x_val[:1], verbose=0)            # warm-up, so the timing below is inference only
    timed = time.perf_counter()
    predicted = np.argmax(model.predict(data.x_val, batch_size=256, verbose=0), axis=1)
    latency = (time.perf_counter() - timed) / max(len(data.x_val), 1)
    found = metrics.classification(data.y_val, predicted, data.n_classes)
    found.update(param_count=int(model.count_params()), train_seconds=round(seconds, 3),
                 seconds_per_epoch=round(seconds / max(callback.epochs_run, 1), 4),
                 latency_ms_per_image=round(1000 * latency, 4))
    found.update(start_epoch=start)
    return TrialResult(spec.number, callback.state, callback.best, callback.epochs_run, callback.reason, found)


def _mixup_batches(x: np.ndarray, y: np.ndarray, batch_size: int, alpha: float, seed: int) -> Any:
    import tensorflow as tf

    return (tf.data.Dataset.from_tensor_slices((x, y.astype("float32")))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .map(lambda a, b: augment.mixup(a, b, alpha), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


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


def _resume(model: Any, data: bytes, callback: Any) -> int:
    """Load weights, optimizer state and best-so-far from a checkpoint; returns the epochs already done."""
    state = ckpt.unpack(data)
    model.set_weights(state.weights)
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    if len(optimizer.variables) != len(state.optimizer):
        raise ValueError(f"checkpoint holds {len(state.optimizer)} optimizer variables, the model has "
                         f"{len(optimizer.variables)}: it was saved by another configuration")
    for variable, value in zip(optimizer.variables, state.optimizer):
        variable.assign(value)
    callback.best, callback.best_epoch = state.best, state.best_epoch
    callback.best_weights = state.best_weights if state.best_weights is not None else state.weights
    callback.values = dict(state.values)
    callback.epochs_run = state.epoch
    return state.epoch
