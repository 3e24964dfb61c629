"""Sweep YAML validation: each mistake is one line naming the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweeps import config
from tests.helpers import ROOT, TINY_SPACE, run_cli


def _load(tmp_path: Path, text: str) -> config.SweepConfig:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return config.load(path)


def _with(**changes: object) -> str:
    return yaml.safe_dump({**TINY_SPACE, **changes})


def _with_param(name: str, spec: object) -> str:
    return _with(parameters={**TINY_SPACE["parameters"], name: spec})


BAD = {
    "malformed YAML": ("study: x\nparameters: {learning_rate: [1, 2\n", "malformed YAML at line"),
    "unknown top-level key": (_with(epocs=3), "epocs: unknown key"),
    "unknown parameter": (_with_param("learning_rte", {"low": 0.1, "high": 1.0}), "parameters.learning_rte: unknown parameter"),
    "low > high": (_with_param("dropout", {"low": 0.6, "high": 0.5}), "parameters.dropout: low (0.6) > high (0.5)"),
    "log with low <= 0": (_with_param("l2", {"low": 0.0, "high": 0.1, "log": True}), "parameters.l2: log scale needs low > 0"),
    "empty choice list": (_with_param("batch_size", {"values": []}), "parameters.batch_size.values: the choice list is empty"),
    "condition on a missing parent": (
        _with_param("momentum", {"low": 0.5, "high": 0.9, "when": {"optimiser": "sgd"}}),
        "parameters.momentum.when.optimiser: the condition names 'optimiser', which is not in parameters"),
    "unknown optimizer": (_with_param("optimizer", {"values": ["adam", "lion"]}), "unknown optimizer 'lion'"),
    "unknown key in a parameter": (_with_param("dropout", {"low": 0.0, "hi": 0.5}), "parameters.dropout.hi: unknown key"),
    "unknown sampler": (_with(sampler={"name": "bayes"}), "sampler.name: unknown sampler 'bayes'"),
    "unknown pruner option": (_with(pruner={"name": "median", "warmup": 2}), "pruner.warmup: unknown key"),
    "flip on digits": (_with(dataset={"name": "digits", "flip": True}), "dataset.flip"),
    "grid with a continuous range": (_with(sampler={"name": "grid"}), "the grid sampler needs discrete values"),
    "condition value not among the parent's": (
        _with_param("momentum", {"low": 0.5, "high": 0.9, "when": {"optimizer": "rmsprop"}}),
        "'rmsprop' is not among optimizer's values"),
    "boolean as a range": (_with_param("batchnorm", {"low": 0, "high": 1}), "parameters.batchnorm: batchnorm is true or false"),
    "boolean as a number": (_with_param("batchnorm", 1), "parameters.batchnorm: batchnorm must be true or false"),
    "unknown schedule": (_with_param("lr_schedule", {"values": ["cosine", "step"]}), "unknown lr_schedule 'step'"),
    "label smoothing of 1": (_with_param("label_smoothing", 1.0), "label_smoothing must be >= 0.0 and < 1.0"),
    "unknown recovery key": (_with(recovery={"retries": 3}), "recovery.retries: unknown key"),
    "negative max_retries": (_with(recovery={"max_retries": -1}), "recovery.max_retries: must be at least 0"),
    "grace period too short": (_with(recovery={"heartbeat_interval": 10, "grace_period": 15}),
                               "recovery.grace_period: must be at least twice heartbeat_interval"),
    "checkpoint store scheme": (_with(checkpoints={"store": "gs://bucket"}), "checkpoints.store: only folders and s3://"),
    "missing weights file": (_with_param("weights", "nowhere/backbone.weights.h5"),
                             "parameters.weights: weights file"),
    "weights as a range": (_with_param("weights", {"low": 0, "high": 1}), "parameters.weights: weights is categorical"),
    "one fold": (_with(dataset={"name": "digits", "folds": 1}), "dataset.folds: must be at least 2"),
    "max_images too small": (_with(dataset={"name": "digits", "max_images": 5}), "dataset.max_images: must be at least 20"),
    "unknown backend": (_with(backend="torch"), "backend: must be one of tensorflow, jax, got 'torch'"),
    "own parameter without model": (_with_param("filters", {"values": [8, 16]}),
                                    "parameters.filters: unknown parameter; known: learning_rate"),
    "model entry malformed": (_with(model="models.build"), "model: must be package.module:function or "
                                                           "file.py:function, got 'models.build'"),
    "model file missing": (_with(model="nope.py:build"), "model: cannot read"),
    "architecture with own model": (_with(model="tests.usermodels:build",
                                          parameters={"architecture": "resnet", "learning_rate": 0.01}),
                                    "parameters.architecture: architecture chooses a built-in model"),
    "own range upside down": (_with(model="tests.usermodels:build", parameters={"filters": {"low": 9, "high": 2}}),
                              "parameters.filters: low (9) > high (2)"),
    "own value not plain": (_with(model="tests.usermodels:build", parameters={"filters": {"value": [1, 2]}}),
                            "parameters.filters: must be a number, a string, true/false or null, got [1, 2]"),
    "first objective not per epoch": (_with(objectives=["latency_ms_per_image", "val_accuracy"]),
                                      "objectives[0].name: unknown objective 'latency_ms_per_image': the first"),
    "objective twice": (_with(objectives=["val_accuracy", "macro_f1", "macro_f1"]),
                        "objectives[2].name: macro_f1 is named twice"),
    "objective and metric disagree": (_with(metric="val_loss", objectives=["val_accuracy", "param_count"]),
                                      "objectives: the first objective (val_accuracy) must be the metric (val_loss)"),
    "constraint as text": ("study: x\ndataset: digits\nparameters: {learning_rate: 0.01}\n"
                           "constraints: {param_count: {max: 2e6}}\n",
                           "constraints.param_count.max: must be a number, got '2e6' (YAML reads 2e6 as text"),
    "constraint on unknown measure": (_with(constraints={"flops": {"max": 1}}), "constraints.flops: unknown measure"),
    "constraint min above max": (_with(constraints={"model_bytes": {"min": 5, "max": 1}}),
                                 "constraints.model_bytes: min (5) > max (1)"),
    "cmaes with objectives": (_with(sampler="cmaes", objectives=["val_accuracy", "param_count"]),
                              "sampler.name: cmaes optimises one objective"),
    "hyperband with objectives": (_with(pruner="hyperband", objectives=["val_accuracy", "param_count"]),
                                  "pruner.name: hyperband works on single-objective studies"),
    "ensemble as text": (_with(finalists={"count": 2, "ensemble": "yes"}),
                         "finalists.ensemble: must be winner (or true: the winning configuration's runs averaged), "
                         "finalists (every finalist's runs averaged) or false, got 'yes'"),
    "ensemble as a number": (_with(finalists={"count": 2, "ensemble": 1}), "finalists.ensemble: must be winner"),
    "ensemble as a list": (_with(finalists={"count": 2, "ensemble": ["winner"]}), "finalists.ensemble: must be winner"),
    "ensemble without finalists": (_with(finalists={"count": 0, "ensemble": True}), "finalists.ensemble: needs finalists"),
    "ensemble with a constraint": (_with(finalists={"count": 2, "ensemble": True},
                                         constraints={"param_count": {"max": 1000000}}),
                                   "finalists.ensemble: an ensemble of n runs has n times the size and latency"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_naming_key_and_file(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    message = str(err.value)
    assert message.startswith(str(path) + ":"), message
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("case", ["malformed YAML", "unknown parameter", "low > high", "condition on a missing parent"])
def test_cli_reports_bad_yaml_without_traceback_and_stores_nothing(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run_cli("run", str(path), cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "sweeps.db").exists()


def test_missing_file_is_clear(tmp_path: Path) -> None:
    result = run_cli("run", str(tmp_path / "nope.yaml"), cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "nope.yaml: no such file" in result.stderr and "Traceback" not in result.stderr


def test_shipped_spaces_load() -> None:
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        cfg = config.load(path)
        assert cfg.parameters and cfg.n_trials >= 1, path


def test_defaults_and_round_trip(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _with())
    assert cfg.direction == "maximize" and cfg.metric == "val_accuracy"
    assert cfg.sampler == {"name": "random", "seed": 0}
    again = config.from_dict(cfg.to_dict(), source="stored")
    assert again == cfg


def test_overrides_keep_validation(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _with())
    changed = cfg.replace(study="other", n_trials=7, parallel=3)
    assert (changed.study, changed.n_trials, changed.parallel) == ("other", 7, 3)
    with pytest.raises(config.ConfigError, match="budget.n_trials: must be at least 1"):
        cfg.replace(n_trials=0)


def test_forms_of_a_parameter(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _with(parameters={
        "learning_rate": 0.01,                                  # fixed
        "batch_size": {"values": [32, 64]},                     # categorical
        "width": {"low": 8, "high": 32, "step": 8},             # int range
        "dropout": {"low": 0.0, "high": 0.5},                   # float range
        "optimizer": {"value": "sgd"},
        "momentum": {"low": 0.5, "high": 0.9, "when": {"optimizer": "sgd"}},
    }))
    p = cfg.parameters
    assert p["learning_rate"].fixed and p["learning_rate"].value == 0.01
    assert p["batch_size"].values == [32, 64]
    assert p["width"].is_int and p["width"].step == 8
    assert p["momentum"].when == {"optimizer": ["sgd"]}


def test_relative_dataset_path_is_taken_from_the_yaml_folder(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _with(dataset={"name": "npz", "path": "data/set.npz"}))
    assert cfg.dataset.path == str(tmp_path / "data" / "set.npz")


def test_int_parameter_rejects_fractions(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="width takes whole numbers"):
        _load(tmp_path, _with_param("width", {"low": 8.5, "high": 32}))


def test_condition_cycle_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cycle"):
        _load(tmp_path, _with(parameters={
            "optimizer": {"values": ["adam", "sgd"], "when": {"architecture": "resnet"}},
            "architecture": {"values": ["simple_cnn", "resnet"], "when": {"optimizer": "sgd"}},
        }))


def test_recovery_and_checkpoint_settings(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _with(recovery={"max_retries": 0, "heartbeat_interval": 2, "grace_period": 5},
                                checkpoints={"store": "ckpt", "keep_best": 1}))
    assert (cfg.max_retries, cfg.heartbeat_interval, cfg.grace_period) == (0, 2.0, 5.0)
    assert cfg.checkpoint_store == str(tmp_path / "ckpt") and cfg.keep_best == 1
    assert config.from_dict(cfg.to_dict(), source="stored") == cfg
    defaults = _load(tmp_path, _with())
    assert (defaults.max_retries, defaults.grace_period, defaults.keep_best) == (2, 60.0, 3)
    assert defaults.checkpoint_store is None


def test_boolean_and_choice_parameters(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _with_param("batchnorm", {"values": [True, False]}))
    assert cfg.parameters["batchnorm"].values == [True, False]
    cfg = _load(tmp_path, _with(parameters={**TINY_SPACE["parameters"], "lr_schedule": {"values": ["constant", "cosine"]},
                                            "early_stopping": 3, "class_weight": "balanced"}))
    assert cfg.parameters["early_stopping"].value == 3 and cfg.parameters["class_weight"].value == "balanced"


def test_weights_path_is_taken_from_the_yaml_folder_and_checked(tmp_path: Path) -> None:
    (tmp_path / "pre.weights.h5").write_bytes(b"x")
    cfg = _load(tmp_path, _with_param("weights", {"values": ["none", "imagenet", "pre.weights.h5"]}))
    assert cfg.parameters["weights"].values == ["none", "imagenet", str(tmp_path / "pre.weights.h5")]
    stored = config.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())), source="study x")
    assert stored.parameters["weights"].values == cfg.parameters["weights"].values


def test_folds_and_max_images_round_trip(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _with(dataset={"name": "digits", "folds": 4, "max_images": 300}))
    assert cfg.dataset.folds == 4 and cfg.dataset.max_images == 300
    assert config.from_dict(cfg.to_dict(), source="study x").dataset == cfg.dataset


def test_backend_defaults_to_tensorflow_and_round_trips(tmp_path: Path) -> None:
    assert _load(tmp_path, _with()).backend == "tensorflow"
    cfg = _load(tmp_path, _with(backend="jax"))
    assert cfg.backend == "jax" and config.from_dict(cfg.to_dict(), source="study x").backend == "jax"


def test_own_model_parameters_round_trip_with_objectives_and_constraints(tmp_path: Path) -> None:
    """A model file is read once and its source stored with the config; the user's parameters keep the kind
    they were declared with; objectives and constraints survive the study's stored copy."""
    (tmp_path / "mine.py").write_text("def build(params, input_shape, n_classes):\n    pass\n")
    cfg = _load(tmp_path, _with(model="mine.py:build", parameters={
        "filters": {"values": [8, 16]}, "blocks": {"low": 1, "high": 3}, "scale": {"low": 0.5, "high": 2.0},
        "act": "relu", "dropout": {"low": 0.0, "high": 0.3}},
        objectives=[{"name": "val_accuracy"}, {"name": "latency_ms_per_image", "goal": "minimize"}],
        constraints={"param_count": {"max": 2.0e6}, "latency_ms_per_image": {"max": 3}}))
    assert cfg.model is not None and cfg.model.entry == "mine:build" and "def build" in (cfg.model.source or "")
    assert cfg.parameters["blocks"].is_int and not cfg.parameters["scale"].is_int
    assert cfg.all_objectives == [("val_accuracy", "maximize"), ("latency_ms_per_image", "minimize")]
    spec = cfg.trial_spec(0, {"filters": 8, "blocks": 2, "scale": 1.0, "act": "relu"}, seed=1)
    assert spec.model == cfg.model and [b.measure for b in spec.limits] == ["param_count"]   # sizes only
    assert spec.params["filters"] == 8 and spec.params["learning_rate"] == 1e-3         # defaults filled in
    (tmp_path / "mine.py").unlink()                  # the stored config needs no file
    assert config.from_dict(cfg.to_dict(), source="stored") == cfg


def test_a_model_that_cannot_be_built_is_one_line_before_anything_is_stored(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(_with(model=f"{ROOT / 'tests' / 'usermodels.py'}:logits",
                           parameters={"filters": {"values": [4, 8]}, "dense": 8}))
    result = run_cli("run", str(space), cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: model usermodels:logits does not output probabilities (its outputs do not sum to 1 per image); "
        "end it with Dense(10, activation='softmax')"]
    assert not (tmp_path / "sweeps.db").exists()


@pytest.mark.parametrize(("function", "expected"), [
    ("broken", "model usermodels:broken failed on input shape (8, 8, 1) with 10 classes: KeyError: 'no_such_parameter'"),
    ("missing", "model usermodels:missing: usermodels has no function 'missing'"),
    ("build", None),
])
def test_the_model_check_names_the_function_and_the_problem(function: str, expected: str | None) -> None:
    """The check `sweeps run` runs in its own process (above), here in this one: each problem is one line."""
    from workers.spec import ModelBuilder
    from workers.usermodel import BuilderError, check

    path = ROOT / "tests" / "usermodels.py"
    builder = ModelBuilder(f"usermodels:{function}", path.read_text(), str(path))
    if expected is None:
        assert check(builder, {"filters": 4, "dense": 8}, (8, 8, 1), 10)["param_count"] == 4 * 10 + 64 * 8 + 8 + 90
        return
    with pytest.raises(BuilderError) as err:
        check(builder, {"filters": 4, "dense": 8}, (8, 8, 1), 10)
    assert str(err.value) == expected
