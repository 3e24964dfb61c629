"""A finished trial's trained model: from its kept checkpoint, or retrained from its parameters and seed.

Shared by `sweeps export`, `sweeps best --evaluate` and `sweeps rerun`. These
run in the user's process and need TensorFlow (`.[tf]`); the coordinator
never does.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from sweeps import study as schema
from sweeps.checkpoints import CheckpointStore
from sweeps.config import SweepConfig
from sweeps.errors import SweepsError
from workers import checkpoint as ckpt
from workers import data as datasets
from workers.hyperparameters import DEFAULTS
from workers.spec import Decision, EpochReport

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")    # TensorFlow's start-up chatter is not progress
Say = Callable[[str], None]


@contextlib.contextmanager
def native_quiet() -> Iterator[None]:
    """C++ code that prints straight to the terminal, silenced: TensorFlow's start-up (on a CPU with oneDNN,
    TensorFlow 2.21 prints two absl lines at import whatever TF_CPP_MIN_LOG_LEVEL says), TensorFlow Lite's
    converter and interpreter ("fully_quantize: 0, ...", "Created TensorFlow Lite XNNPACK delegate"): not
    progress. Kept with --debug (SWEEPS_DEBUG)."""
    if os.environ.get("SWEEPS_DEBUG"):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # tf.lite.Interpreter's deprecation notice
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def import_keras() -> None:
    """Keras, and the framework under it, imported once with its start-up lines silenced (``native_quiet``)."""
    if "keras" not in sys.modules:
        with native_quiet():
            import keras  # noqa: F401


@dataclass
class Trained:
    study: optuna.Study
    config: SweepConfig
    trial: optuna.trial.FrozenTrial
    data: datasets.Arrays
    model: Any                 # Keras model without augmentation layers, weights of the trial's best epoch
    source: str                # "checkpoint" or "retrained"
    members: tuple[int, ...] = ()    # an ensemble's runs (finalists.ensemble); empty: the trial's model alone


def load_trained(study_name: str, storage_url: str | None, number: int | None = None, *,
                 say: Say = lambda line: None) -> Trained:
    """The best trial (or trial ``number``) with its model; retrained when no checkpoint was kept. The best
    under ``finalists.ensemble``: the winner's (or every finalist's) runs, their predictions averaged."""
    study = schema.load(study_name, storage_url)
    config = schema.load_config(study)
    trial = pick_trial(study, number)
    data = load_data(config, study_name, say)
    import_keras()
    members = schema.ensemble_runs(study) if number is None else []
    if not members:
        model, source = _trial_model(study, config, trial, data, say)
        return Trained(study, config, trial, data, model, source)
    say(f"the handed-over model averages the runs of finalists.ensemble: trials {', '.join(map(str, members))}")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    built = [_trial_model(study, config, trials[n], data, say) for n in members]
    sources = {source for _, source in built}
    return Trained(study, config, trial, data, ensemble([m for m, _ in built], members, data),
                   sources.pop() if len(sources) == 1 else "checkpoint and retrained", tuple(members))


def _trial_model(study: optuna.Study, config: SweepConfig, trial: optuna.trial.FrozenTrial, data: datasets.Arrays,
                 say: Say) -> tuple[Any, str]:
    weights, source = _kept_weights(study, config, trial)
    if weights is None:
        say(f"no checkpoint kept for trial {trial.number}: retraining it ({config.epochs} epochs, seed "
            f"{trial.user_attrs.get(schema.SEED)})")
        weights, _ = retrain(config, trial, data, config.epochs)
        source = "retrained"
    return serving_model(weights, {**DEFAULTS, **schema.full_params(trial)}, config, data), source


def ensemble(models: list[Any], numbers: list[int], data: datasets.Arrays) -> Any:
    """One Keras model that averages the members' class probabilities (exports and serves as one model)."""
    import keras

    inputs = keras.Input(shape=data.input_shape, name="image")
    outputs = [keras.Model(m.inputs, m.outputs[0], name=f"trial_{n}")(inputs) for m, n in zip(models, numbers)]
    return keras.Model(inputs, keras.layers.Average(name="mean_probabilities")(outputs), name="ensemble")


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    if number is None:
        best = schema.best_trial(study)
        if best is None:
            raise SweepsError(f"study {study.study_name!r} has no completed trial yet")
        return best
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise SweepsError(f"study {study.study_name!r} has no trial {number}; `sweeps status` lists them")
    if trials[number].state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        raise SweepsError(f"trial {number} is {trials[number].state.name}; only complete or pruned trials "
                          "have a value to reproduce")
    return trials[number]


def load_data(config: SweepConfig, study_name: str, say: Say) -> datasets.Arrays:
    say(f"loading the data of study {study_name}")
    try:
        return datasets.load(config.dataset.to_dict(), seed=config.seed)
    except datasets.DatasetError as e:
        raise SweepsError(f"the dataset of study {study_name!r} is not reachable here: {e}") from None


def _kept_weights(study: optuna.Study, config: SweepConfig,
                  trial: optuna.trial.FrozenTrial) -> tuple[list[np.ndarray] | None, str]:
    key = schema.checkpoint_key(study)
    if not (config.checkpoint_store and key):
        return None, ""
    try:
        raw, _ = CheckpointStore(config.checkpoint_store, key).load(schema.config_id(trial.number, trial.user_attrs))
    except SweepsError:
        return None, ""
    if raw is None:
        return None, ""
    state = ckpt.unpack(raw)
    if state.epoch < trial.user_attrs.get(schema.EPOCHS_RUN, state.epoch):
        return None, ""        # an older attempt's checkpoint: not this trial's final state
    return (state.best_weights if state.best_weights is not None else state.weights), "checkpoint"


def retrain(config: SweepConfig, trial: optuna.trial.FrozenTrial, data: datasets.Arrays,
            epochs: int) -> tuple[list[np.ndarray], float]:
    """Train the trial's configuration again with its seed and thread count, no pruning; (best weights, value)."""
    from workers.trainer import configure_threads, train_trial

    class KeepLast:
        last: bytes | None = None

        def report(self, report: EpochReport) -> Decision:
            self.last = report.checkpoint
            return Decision.CONTINUE

    reporter = KeepLast()
    seed = trial.user_attrs.get(schema.SEED, schema.trial_seed(config.seed, trial.number))
    spec = config.trial_spec(trial.number, schema.full_params(trial), seed, epochs=epochs)
    configure_threads(spec.threads)
    result = train_trial(spec, data.training_only(), reporter)
    if reporter.last is None or result.value is None:
        raise SweepsError(f"retraining trial {trial.number} measured nothing ({result.reason or 'no epoch ran'})")
    state = ckpt.unpack(reporter.last)
    return (state.best_weights if state.best_weights is not None else state.weights), float(result.value)


def serving_model(weights: list[np.ndarray], params: dict[str, Any], config: SweepConfig,
                  data: datasets.Arrays) -> Any:
    """The trained network without its (training-only) augmentation layers, weights copied layer by layer."""
    from workers import usermodel

    params = dict(params, weights="none")      # the trial's weights replace any starting weights
    try:
        return _copy_without_augmentation(weights, params, config, data)
    except usermodel.BuilderError as e:
        raise SweepsError(str(e)) from None


def _copy_without_augmentation(weights: list[np.ndarray], params: dict[str, Any], config: SweepConfig,
                               data: datasets.Arrays) -> Any:
    from workers import augment, models

    trained = models.build(params, data.input_shape, data.n_classes,
                           augment.layers(params["augment"], config.dataset.flip, seed=0,
                                          erasing=params["random_erasing"]), builder=config.model)
    trained.set_weights(weights)
    plain = models.build(params, data.input_shape, data.n_classes, [], builder=config.model)
    source = [layer for layer in trained.layers if layer.weights and not type(layer).__name__.startswith("Random")]
    target = [layer for layer in plain.layers if layer.weights]
    if len(source) != len(target):
        raise SweepsError("the trained model and its serving copy differ in layers; report this as a bug")
    for src, dst in zip(source, target):
        dst.set_weights(src.get_weights())
    return plain


def evaluate(trained: Trained) -> dict[str, Any]:
    """The same metrics as each trial's, on the held-out test split (never used for selection); the answer is
    also stored in the study (TEST_ATTR) for `sweeps report`, best effort."""
    import datetime

    from workers import metrics

    data = trained.data
    if data.x_test is None or data.y_test is None or not len(data.x_test):
        raise SweepsError(f"study {trained.study.study_name!r} has no test split (dataset.test_fraction is 0); "
                          "start a sweep with dataset.test_fraction > 0 to evaluate on held-out images")
    predicted = np.argmax(trained.model.predict(data.x_test, batch_size=256, verbose=0), axis=1)
    found = metrics.classification(data.y_test, predicted, data.n_classes)
    found["n_test"] = int(len(data.y_test))
    if trained.members:
        found["members"] = list(trained.members)
    try:      # kept in the study for `sweeps report`'s best-so-far picture; the answer stands without it
        trained.study.set_user_attr(schema.TEST_ATTR, {
            "trial": trained.trial.number, "members": list(trained.members), "test_accuracy": float(found["accuracy"]),
            "macro_f1": float(found["macro_f1"]), "n_test": found["n_test"], "source": trained.source,
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    except Exception:
        pass
    return found


def rerun(study_name: str, storage_url: str | None, number: int, *, say: Say = lambda line: None) -> dict[str, Any]:
    """Train trial ``number`` again (same parameters, seed and epochs, no pruning) and compare its value."""
    study = schema.load(study_name, storage_url)
    config = schema.load_config(study)
    trial = pick_trial(study, number)
    data = load_data(config, study_name, say)
    import_keras()
    epochs = config.epochs if config.dataset.folds else int(trial.user_attrs.get(schema.EPOCHS_RUN, config.epochs))
    say(f"retraining trial {number}: {epochs} epochs, seed {trial.user_attrs.get(schema.SEED)}")
    _, value = retrain(config, trial, data, epochs)
    stored = schema.first_value(trial)
    if stored is None:     # a pruned trial: its best reported epoch
        values = list(trial.intermediate_values.values())
        stored = (max if config.maximize else min)(values)
    difference = value - stored
    return {"study": study_name, "trial": number, "state": trial.state.name, "epochs": epochs,
            "seed": trial.user_attrs.get(schema.SEED), "stored_value": stored, "rerun_value": value,
            "difference_points": round(100 * difference, 3), "within_half_point": abs(difference) <= 0.005}
