"""Sampler and pruner from the stored config.

Optuna stores neither in the study: every process that loads a study must
rebuild the same ones, or it silently gets the defaults. This is the one
place that does it, for ``run`` and ``resume`` alike.
"""

from __future__ import annotations

import warnings

import optuna

from sweeps import space
from sweeps.config import SweepConfig
from sweeps.errors import SweepsError
from sweeps.objectives import first_objective
from sweeps.rungs import RungPruner, fixed_rungs


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler calls ``study.stop()`` when the grid is used up, which raises
    under ask/tell and leaves the last trial RUNNING; the coordinator caps the
    budget at the grid's size instead."""

    def after_trial(self, study, trial, state, values):  # type: ignore[no-untyped-def]
        pass


class _FirstObjectiveTPE(optuna.samplers.TPESampler):
    """TPE on a study with several objectives whose trials report per-epoch values. Optuna's TPE ranks a
    pruned trial by its last reported value under ``study.direction``, which a multi-objective study
    refuses (Optuna expects no reports there); here that direction is the first objective's, the one the
    values belong to. Complete trials are still ranked on every objective (non-domination)."""

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        return super().infer_relative_search_space(first_objective(study), trial)

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        return super().sample_relative(first_objective(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        return super().sample_independent(first_objective(study), trial, param_name, param_distribution)


def sampler(config: SweepConfig, salt: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler; ``salt`` (non-zero when resuming) moves its seed.

    A sampler rebuilt with the study's own seed would draw the same random
    start-up points again after a resume: duplicates of trials already run.
    """
    opts = {k: v for k, v in config.sampler.items() if k != "name"}
    if salt and opts.get("seed") is not None:
        opts["seed"] = (int(opts["seed"]) * 1_000_003 + salt) % (2 ** 32)
    name = config.sampler["name"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            # multivariate + group model conditional spaces well; constant_liar
            # keeps parallel trials from piling onto the same point.
            opts.setdefault("multivariate", True)
            opts.setdefault("group", opts["multivariate"])
            opts.setdefault("constant_liar", config.parallel > 1)
            opts.setdefault("n_startup_trials", min(10, max(2, config.n_trials // 4)))
            return (_FirstObjectiveTPE if config.objectives else optuna.samplers.TPESampler)(**opts)
        if name == "random":
            return optuna.samplers.RandomSampler(**opts)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(**opts)
        if name == "gp":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise SweepsError("sampler gp needs PyTorch; install it with `pip install 'sweeps[gp]'` "
                                  "or choose sampler tpe") from None
            return optuna.samplers.GPSampler(**opts)
        if name == "grid":
            return _AskTellGridSampler(space.grid(config.parameters), seed=opts.get("seed"))
    raise SweepsError(f"unknown sampler {name!r}")


def pruner(config: SweepConfig) -> optuna.pruners.BasePruner:
    opts = {k: v for k, v in config.pruner.items() if k != "name"}
    name = config.pruner["name"]
    if name == "median":
        opts.setdefault("n_startup_trials", 2)
        opts.setdefault("n_warmup_steps", 1)
        return optuna.pruners.MedianPruner(**opts)
    opts.pop("audit", None)         # the coordinator's: trials run on past a "prune"
    pause = opts.pop("pause", None)  # the coordinator's: a "prune" at a rung pauses the trial
    del pause
    if name == "successive_halving":
        opts.setdefault("min_resource", 1)
        return optuna.pruners.SuccessiveHalvingPruner(**opts)
    if name == "asha":
        eta = int(opts.get("reduction_factor", 3))
        return RungPruner(config.steps, eta, rungs=fixed_rungs(int(opts.get("min_resource", 1)), eta, config.steps,
                                                                int(opts.get("min_early_stopping_rate", 0))))
    if name == "auto":
        return RungPruner(config.steps, int(opts.get("reduction_factor", 3)), threshold=float(opts.get("threshold", 0.8)),
                          min_trials=int(opts.get("min_trials", 5)))
    if name == "hyperband":
        opts.setdefault("max_resource", config.steps)
        return optuna.pruners.HyperbandPruner(**opts)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SweepsError(f"unknown pruner {name!r}")
