"""The Python API, for notebooks and scripts: ``run_sweep``, ``resume_sweep`` and ``load_sweep``.

The CLI is a thin layer over these functions. Each returns a ``Sweep``: the
Optuna study (for Optuna's own tools), the resolved config, and the best
trial with the metrics its worker measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import optuna

from sweeps import study as schema
from sweeps.config import SweepConfig, from_dict, load
from sweeps.dispatch import Dispatcher
from sweeps.progress import ProgressCallback
from sweeps.storage import resolve_url


@dataclass
class Sweep:
    """A stored sweep. ``summary`` holds the run's counts when this call ran it."""

    study: optuna.Study
    config: SweepConfig
    storage_url: str
    summary: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def best_trial(self) -> optuna.trial.FrozenTrial | None:
        """The trial handed over: the finalists' winner once they ran, else the best complete trial."""
        return schema.best_trial(self.study)

    @property
    def finalists(self) -> list[dict[str, Any]]:
        """The finalists, best mean first: {config, trial (handed over), values, mean, std, trials}."""
        return schema.standings(self.study.get_trials(deepcopy=False), schema.maximize(self.study))

    @property
    def ensemble(self) -> list[int]:
        """Under ``finalists.ensemble``: the runs whose averaged predictions are handed over (export, evaluate);
        under ``ensemble: finalists`` the best complete trials until a finalist run finishes."""
        return schema.ensemble_runs(self.study)

    @property
    def best_value(self) -> float | None:
        best = self.best_trial
        return None if best is None else schema.first_value(best)

    @property
    def pareto_front(self) -> list[optuna.trial.FrozenTrial]:
        """Complete trials meeting every constraint that no other beats on all objectives."""
        return schema.pareto_front(self.study)

    @property
    def best_params(self) -> dict[str, Any]:
        """Searched and fixed parameters of the best trial: everything needed to train it again."""
        best = self.best_trial
        return {} if best is None else schema.full_params(best)

    @property
    def best_metrics(self) -> dict[str, Any]:
        best = self.best_trial
        return {} if best is None else schema.metrics(best)

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials()

    def __repr__(self) -> str:
        best = "-" if self.best_value is None else f"{self.best_value:.4f}"
        return f"Sweep({self.name!r}, trials={len(self.study.get_trials(deepcopy=False))}, best={best})"


def _config(config: SweepConfig | dict[str, Any] | str | os.PathLike[str]) -> SweepConfig:
    if isinstance(config, SweepConfig):
        return config
    if isinstance(config, dict):
        return from_dict(config, source="config dict", base_dir=os.getcwd())
    return load(config)


def run_sweep(config: SweepConfig | dict[str, Any] | str | os.PathLike[str], storage: str | None = None, *,
              study: str | None = None, n_trials: int | None = None, timeout: float | None = None,
              parallel: int | None = None, ray_address: str | None = None,
              on_progress: ProgressCallback | None = None, dispatcher: Dispatcher | None = None) -> Sweep:
    """Create a study from a config (a YAML path, a dict shaped like the YAML, or a SweepConfig) and run it.

    Trials run on Ray (a private local one, or the cluster at ``ray_address``) unless a ``dispatcher`` is given.
    """
    from sweeps import runner

    cfg = _config(config).replace(study=study, n_trials=n_trials, timeout=timeout, parallel=parallel)
    summary = runner.run_sweep(cfg, storage, ray_address=ray_address, on_progress=on_progress,
                                    dispatcher=dispatcher)
    return _loaded(cfg.study, storage, summary)


def resume_sweep(name: str, storage: str | None = None, *, n_trials: int | None = None,
                 max_failed_trials: int | None = None, checkpoint_store: str | None = None,
                 ray_address: str | None = None, on_progress: ProgressCallback | None = None,
                 dispatcher: Dispatcher | None = None) -> Sweep:
    """Continue a stored sweep until its budget is met (any machine that reaches the database)."""
    from sweeps import runner

    summary = runner.resume_sweep(name, storage, n_trials=n_trials, max_failed_trials=max_failed_trials,
                                  checkpoint_store=checkpoint_store, ray_address=ray_address,
                                  on_progress=on_progress, dispatcher=dispatcher)
    return _loaded(name, storage, summary)


def load_sweep(name: str, storage: str | None = None) -> Sweep:
    """A stored sweep, read-only: nothing runs."""
    return _loaded(name, storage, None)


def _loaded(name: str, storage: str | None, summary: dict[str, Any] | None) -> Sweep:
    study = schema.load(name, storage)
    return Sweep(study, schema.load_config(study), resolve_url(storage), summary)
