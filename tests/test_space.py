"""Search space -> Optuna suggestions: conditional parameters exist only under their parent."""

from __future__ import annotations

import optuna
import yaml

from sweeps import algorithms, config, space
from sweeps.rungs import RungPruner
from tests.helpers import TINY_SPACE


def _config(**changes: object) -> config.SweepConfig:
    return config.from_dict(yaml.safe_load(yaml.safe_dump({**TINY_SPACE, **changes})), source="test")


def test_conditional_parameters_only_under_their_parent() -> None:
    cfg = _config()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        chosen = space.suggest(trial, cfg.parameters)
        assert ("momentum" in trial.params) == (chosen["optimizer"] == "sgd")
        assert ("depth" in trial.params) == (chosen["architecture"] == "resnet")
        assert "batch_size" not in trial.params and chosen["batch_size"] == 64   # fixed: not searched
        seen.add((chosen["optimizer"], chosen["architecture"]))
        study.tell(trial, 0.5)
    assert len(seen) == 4


def test_children_come_after_parents_whatever_the_yaml_order() -> None:
    cfg = _config(parameters={
        "depth": {"values": [1, 2], "when": {"architecture": "resnet"}},
        "architecture": {"values": ["resnet"]},
    })
    names = [p.name for p in space.ordered(cfg.parameters)]
    assert names.index("architecture") < names.index("depth")


def test_the_trial_spec_fills_defaults_and_carries_the_direction() -> None:
    cfg = config.from_dict({**TINY_SPACE, "metric": {"name": "val_loss"}}, source="t")
    spec = cfg.trial_spec(7, {"learning_rate": 0.1}, seed=3)
    params = spec.params
    assert params["learning_rate"] == 0.1 and params["optimizer"] == "adam" and params["augment"] == 0.0
    assert (spec.number, spec.seed, spec.epochs, spec.metric, spec.maximize) == (7, 3, TINY_SPACE["epochs"], "val_loss",
                                                                               False)
    assert cfg.trial_spec(7, {}, seed=3, epochs=0).epochs == 0        # a rerun of a trial that ran no epoch


def test_grid_covers_every_combination() -> None:
    cfg = _config(sampler={"name": "grid"}, parameters={
        "batch_size": {"values": [32, 64]}, "width": {"low": 8, "high": 24, "step": 8}, "learning_rate": 0.01})
    assert space.grid(cfg.parameters) == {"batch_size": [32, 64], "width": [8, 16, 24]}
    assert space.grid_size(cfg.parameters) == 6
    sampler = algorithms.sampler(cfg)
    study = optuna.create_study(sampler=sampler)
    combos = set()
    for _ in range(6):
        t = study.ask()
        combos.add(tuple(space.suggest(t, cfg.parameters).items()))
        study.tell(t, 0.0)
    assert len(combos) == 6


def test_every_sampler_and_pruner_builds() -> None:
    for name in ("tpe", "random", "cmaes"):
        assert algorithms.sampler(_config(sampler={"name": name})) is not None
    kinds = {"median": optuna.pruners.MedianPruner, "asha": RungPruner, "auto": RungPruner,
             "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
             "hyperband": optuna.pruners.HyperbandPruner, "none": optuna.pruners.NopPruner}
    for name, kind in kinds.items():
        assert isinstance(algorithms.pruner(_config(pruner={"name": name})), kind)
