"""ask -> dispatch -> relay reports and prune decisions -> tell.

The coordinator is the only process that talks to the study storage. It asks
Optuna for a trial, sends plain parameters to a Ray trainer slot, turns each
per-epoch report into ``trial.report`` + ``trial.should_prune`` and answers the
worker, and tells Optuna how the trial ended. Everything a resume needs lives
in the study's user attributes.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from sweeps import __version__, algorithms, space
from sweeps.config import ConfigError, SweepConfig, from_dict
from sweeps.errors import SweepsError
from sweeps.storage import mask, open_storage, resolve_url
from workers import data as datasets
from workers.spec import Decision, EpochReport, TrialResult, TrialSpec, TrialState

CONFIG_ATTR = "sweeps:config"
DATASET_ATTR = "sweeps:dataset"
VERSION_ATTR = "sweeps:version"
REASON_ATTR = "reason"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class Progress:
    """A snapshot for the live display; counts are over the whole study."""

    study: str
    n_trials: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best_value: float | None = None
    best_number: int | None = None
    started: float = field(default_factory=time.monotonic)
    timeout: float | None = None
    stopping: bool = False
    last: str = ""                   # one line about the latest event

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


ProgressCallback = Callable[[Progress], None]


def run_sweep(config: SweepConfig, storage_url: str | None = None, *, ray_address: str | None = None,
              on_progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Create the study and run it until its budget is met."""
    arrays = _load_data(config)
    storage = open_storage(storage_url, create=True)
    try:
        study = optuna.create_study(storage=storage, study_name=config.study, direction=config.direction,
                                    sampler=algorithms.sampler(config), pruner=algorithms.pruner(config))
    except optuna.exceptions.DuplicatedStudyError:
        raise SweepsError(
            f"study {config.study!r} already exists in {mask(resolve_url(storage_url))}; "
            f"continue it with `sweeps resume {config.study}` or choose another name with --study"
        ) from None
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    study.set_user_attr(DATASET_ATTR, {**config.dataset.to_dict(), **arrays.describe()})
    study.set_user_attr(VERSION_ATTR, __version__)
    return Coordinator(study, config, arrays, ray_address=ray_address, on_progress=on_progress).run()


def load_config(study: optuna.Study) -> SweepConfig:
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise SweepsError(f"study {study.study_name!r} was not created by sweeps (it has no stored config); "
                          "only sweeps studies can be resumed")
    return from_dict(raw, source=f"study {study.study_name}")


def load_study(name: str, storage_url: str | None, config: SweepConfig | None = None) -> optuna.Study:
    """Load a study with the sampler and pruner rebuilt from its stored config."""
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise SweepsError(f"no study named {name!r} in {mask(resolve_url(storage_url))}; "
                          "`sweeps ls` lists the studies there") from None
    config = config or load_config(study)
    return optuna.load_study(study_name=name, storage=storage,
                             sampler=algorithms.sampler(config), pruner=algorithms.pruner(config))


def resume_sweep(name: str, storage_url: str | None = None, *, n_trials: int | None = None,
                 ray_address: str | None = None, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Continue a stored study until its budget is met; the config comes from the study."""
    study = load_study(name, storage_url)
    config = load_config(study)
    if n_trials is not None:
        config = config.replace(n_trials=n_trials)
        study.set_user_attr(CONFIG_ATTR, config.to_dict())
    arrays = _load_data(config)
    return Coordinator(study, config, arrays, ray_address=ray_address, on_progress=on_progress).run()


def _load_data(config: SweepConfig) -> datasets.Arrays:
    try:
        return datasets.load(config.dataset.to_dict(), seed=config.seed)
    except datasets.DatasetError as e:
        raise ConfigError(f"dataset: {e}") from None


def trial_seed(study_seed: int, number: int) -> int:
    """Each trial's seed: derived from the study seed and its number, so a rerun repeats it."""
    return (study_seed * 100_003 + number) % (2 ** 31 - 1)


class Coordinator:
    """Keeps ``parallel`` trials in flight on Ray until the budget is met or a stop is asked for."""

    POLL_SECONDS = 0.2

    def __init__(self, study: optuna.Study, config: SweepConfig, arrays: datasets.Arrays, *,
                 ray_address: str | None = None, on_progress: ProgressCallback | None = None) -> None:
        self.study = study
        self.config = config
        self.arrays = arrays
        self.ray_address = ray_address
        self.on_progress = on_progress or (lambda p: None)
        self.n_trials = config.n_trials
        if config.sampler["name"] == "grid":
            self.n_trials = min(self.n_trials, space.grid_size(config.parameters))
        self.progress = Progress(config.study, self.n_trials, timeout=config.timeout)
        self.trials: dict[int, optuna.Trial] = {}
        self.interrupts = 0

    # -- budget -------------------------------------------------------------------------------
    def _count(self) -> None:
        p = self.progress
        trials = self.study.get_trials(deepcopy=False, states=FINISHED)
        p.complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        p.pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
        p.failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
        p.running = len(self.trials)
        try:
            best = self.study.best_trial
            p.best_value, p.best_number = best.value, best.number
        except ValueError:
            pass

    def _may_launch(self) -> bool:
        p = self.progress
        if p.stopping:
            return False
        if self.config.timeout is not None and p.elapsed >= self.config.timeout:
            p.stopping, p.last = True, f"timeout of {self.config.timeout:g}s reached; letting running trials finish"
            return False
        return p.finished + len(self.trials) < self.n_trials

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        import ray

        self._count()
        if self.progress.finished >= self.n_trials:
            return self.summary()
        _start_ray(self.ray_address)
        previous = signal.signal(signal.SIGINT, self._interrupt)
        try:
            self._check_resources()
            self._loop()
        finally:
            signal.signal(signal.SIGINT, previous)
            ray.shutdown()
        self._count()
        summary = self.summary()
        if self.interrupts:
            summary["interrupted"] = True
        return summary

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.interrupts += 1
        self.progress.stopping = True
        self.progress.last = ("stopping: no new trials; running ones finish (Ctrl-C again to stop them now)"
                              if self.interrupts == 1 else "stopping now: running trials are recorded as interrupted")

    def _check_resources(self) -> None:
        import ray

        have = ray.cluster_resources()
        cpus, gpus = self.config.cpus, self.config.gpus
        if gpus > 0 and have.get("GPU", 0) < gpus:
            raise SweepsError(f"resources.gpus is {gpus:g} but the Ray cluster has {have.get('GPU', 0):g} GPUs; "
                              "set resources.gpus: 0 or connect to a cluster with GPUs (--ray-address)")
        need = self.config.parallel * cpus
        if have.get("CPU", 0) < need:
            raise SweepsError(f"parallel {self.config.parallel} x resources.cpus {cpus:g} needs {need:g} CPUs but the "
                              f"Ray cluster has {have.get('CPU', 0):g}; lower parallel or resources.cpus")

    def _loop(self) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        from workers.remote import ReportBroker, TrainerWorker

        cfg = self.config
        broker = ray.remote(num_cpus=0)(ReportBroker).remote()
        worker_cls = ray.remote(TrainerWorker).options(num_cpus=cfg.cpus, num_gpus=cfg.gpus, max_restarts=0)
        threads = max(1, int(math.floor(cfg.cpus)))
        slots = min(cfg.parallel, self.n_trials - self.progress.finished)
        idle = [worker_cls.remote(threads) for _ in range(slots)]
        data_ref = ray.put(self.arrays)
        in_flight: dict[Any, tuple[int, Any]] = {}     # result ref -> (trial number, worker)
        self.progress.last = f"starting {slots} worker(s)"
        self.on_progress(self.progress)

        while True:
            if self.interrupts >= 2:
                for ref, (number, worker) in list(in_flight.items()):
                    ray.kill(worker)
                    self._tell(number, TrialResult(number, TrialState.FAILED, None, 0, "interrupted (Ctrl-C)"))
                return
            while idle and self._may_launch():
                worker = idle.pop()
                number, spec = self._ask()
                in_flight[worker.train.remote(spec, data_ref, broker)] = (number, worker)
                self._count()
                self.progress.last = f"trial {number} started"
                self.on_progress(self.progress)
            if not in_flight:
                return
            for report in ray.get(broker.drain.remote(self.POLL_SECONDS)):
                decision = self._relay(report)
                broker.decide.remote(report.number, report.epoch, decision)
            done, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
            for ref in done:
                number, worker = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as e:
                    result = TrialResult(number, TrialState.FAILED, None, 0, f"worker lost: {_first_line(e)}")
                    worker = worker_cls.remote(threads)
                except RayTaskError as e:
                    result = TrialResult(number, TrialState.FAILED, None, 0, f"worker error: {_first_line(e)}")
                broker.release.remote(number)
                self._tell(number, result)
                idle.append(worker)

    def _ask(self) -> tuple[int, TrialSpec]:
        trial = self.study.ask()
        chosen = space.suggest(trial, self.config.parameters)
        seed = trial_seed(self.config.seed, trial.number)
        trial.set_user_attr("seed", seed)
        fixed = {k: v for k, v in chosen.items() if k not in trial.params}
        if fixed:
            trial.set_user_attr("fixed_params", fixed)
        self.trials[trial.number] = trial
        spec = TrialSpec(number=trial.number, params=space.trial_params(chosen), epochs=self.config.epochs,
                         seed=seed, metric=self.config.metric, flip=self.config.dataset.flip,
                         threads=max(1, int(self.config.cpus)))
        return trial.number, spec

    def _relay(self, report: EpochReport) -> Decision:
        trial = self.trials.get(report.number)
        if trial is None:
            return Decision.PRUNE
        if not math.isfinite(report.value):
            return Decision.CONTINUE
        trial.report(report.value, report.epoch)
        if report.epoch >= self.config.epochs:  # fully trained: keep it as a complete trial
            return Decision.CONTINUE
        return Decision.PRUNE if trial.should_prune() else Decision.CONTINUE

    def _tell(self, number: int, result: TrialResult) -> None:
        trial = self.trials.pop(number)
        trial.set_user_attr("epochs_run", result.epochs_run)
        if result.reason:
            trial.set_user_attr(REASON_ATTR, result.reason)
        for key, value in result.metrics.items():
            trial.set_user_attr(key, value)
        if result.state == TrialState.COMPLETE and result.value is not None and math.isfinite(result.value):
            self.study.tell(trial, result.value)
            shown = f"{result.value:.4f}"
        elif result.state == TrialState.PRUNED:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            shown = result.reason
        else:
            if result.state == TrialState.COMPLETE:
                trial.set_user_attr(REASON_ATTR, "no finite metric was measured")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            shown = result.reason or "failed"
        self._count()
        self.progress.last = f"trial {number} {result.state.value}: {shown}"
        self.on_progress(self.progress)

    def summary(self) -> dict[str, Any]:
        p = self.progress
        return {
            "study": p.study, "n_trials": p.n_trials, "complete": p.complete, "pruned": p.pruned,
            "failed": p.failed, "best_value": p.best_value, "best_trial": p.best_number,
            "best_params": self.study.best_trial.params if p.best_number is not None else None,
            "elapsed_seconds": round(p.elapsed, 1), "budget_met": p.finished >= p.n_trials,
        }


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _start_ray(address: str | None) -> None:
    """A private local Ray on loopback, or the cluster at ``address``."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False,
                              "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local Ray instance"
        raise SweepsError(f"cannot start or reach Ray at {where}: {_first_line(e)}; check --ray-address "
                          "or leave it out for a local Ray") from None
