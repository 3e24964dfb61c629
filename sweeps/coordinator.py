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
import socket
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from sweeps import __version__, algorithms, dashboard, recovery, space
from sweeps import storage as db
from sweeps.checkpoints import CheckpointStore, default_location
from sweeps.config import ConfigError, SweepConfig, from_dict
from sweeps.errors import SweepsError
from sweeps.storage import mask, open_storage, resolve_url
from workers import data as datasets
from workers.checkpoint import read_meta
from workers.spec import Decision, EpochReport, TrialResult, TrialSpec, TrialState

CONFIG_ATTR = "sweeps:config"
DATASET_ATTR = "sweeps:dataset"
VERSION_ATTR = "sweeps:version"
UID_ATTR = "sweeps:uid"           # names the study's checkpoint folder, unique across databases
REASON_ATTR = recovery.REASON
COORDINATOR_ID = f"{socket.gethostname()}:{os.getpid()}"   # which process ran a trial (user attr "coordinator")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Optuna warns that its heartbeat is meant for optimize(); with ask/tell the coordinator beats itself.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


@dataclass
class Progress:
    """A snapshot for the live display; counts are over the whole study."""

    study: str
    n_trials: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0                 # retries queued
    retried: int = 0                 # failed attempts replaced by a retry
    best_value: float | None = None
    best_number: int | None = None
    started: float = field(default_factory=time.monotonic)
    timeout: float | None = None
    gpu_hours: float | None = None           # GPU time spent by the study so far (when budgeted)
    gpu_budget: float | None = None
    stopping: bool = False
    stop_reason: str = ""            # a budget that ended the launching (timeout, GPU hours)
    last: str = ""                   # one line about the latest event

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


ProgressCallback = Callable[[Progress], None]


def run_sweep(config: SweepConfig, storage_url: str | None = None, *, ray_address: str | None = None,
              on_progress: ProgressCallback | None = None, worker: type | None = None) -> dict[str, Any]:
    """Create the study and run it until its budget is met (``worker``: see ``Coordinator``)."""
    arrays = _load_data(config)
    storage = open_storage(storage_url, create=True)
    if config.checkpoint_store is None:
        config = config.replace(checkpoint_store=default_location(resolve_url(storage_url)))
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
    study.set_user_attr(UID_ATTR, uuid.uuid4().hex[:12])
    return Coordinator(study, config, arrays, ray_address=ray_address, on_progress=on_progress,
                       worker=worker).run()


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
    salt = len(study.get_trials(deepcopy=False)) * 65_537 + os.getpid()   # see algorithms.sampler
    return optuna.load_study(study_name=name, storage=storage,
                             sampler=algorithms.sampler(config, salt), pruner=algorithms.pruner(config))


def resume_sweep(name: str, storage_url: str | None = None, *, n_trials: int | None = None,
                 ray_address: str | None = None, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Continue a stored study until its budget is met; the config comes from the study."""
    study = load_study(name, storage_url)
    config = load_config(study)
    arrays = _load_data(config, resuming=True)     # before anything is written to the study
    if n_trials is not None:
        config = config.replace(n_trials=n_trials)
        study.set_user_attr(CONFIG_ATTR, config.to_dict())
    return Coordinator(study, config, arrays, ray_address=ray_address, on_progress=on_progress).run()


def _load_data(config: SweepConfig, resuming: bool = False) -> datasets.Arrays:
    try:
        return datasets.load(config.dataset.to_dict(), seed=config.seed)
    except datasets.DatasetError as e:
        if resuming:
            raise SweepsError(f"the dataset of study {config.study!r} is not reachable from this machine: {e} "
                              "(resume needs the same dataset path as the machine that started the sweep)") from None
        raise ConfigError(f"dataset: {e}") from None


def trial_seed(study_seed: int, number: int) -> int:
    """Each trial's seed: derived from the study seed and its number, so a rerun repeats it."""
    return (study_seed * 100_003 + number) % (2 ** 31 - 1)


class Coordinator:
    """Keeps ``parallel`` trials in flight on Ray until the budget is met or a stop is asked for.

    Every database call goes through ``_db`` (retry with backoff while the
    database is away); every running trial gets a heartbeat; lost trials of
    other coordinators are failed and queued again; failed trials are retried
    from their last checkpoint.
    """

    POLL_SECONDS = 0.2

    def __init__(self, study: optuna.Study, config: SweepConfig, arrays: datasets.Arrays, *,
                 ray_address: str | None = None, on_progress: ProgressCallback | None = None,
                 worker: type | None = None) -> None:
        self.study = study
        self.config = config
        self.arrays = arrays
        self.ray_address = ray_address
        self.worker = worker          # the Ray actor class of a trial slot; benchmarks swap in a sleeping one
        self.on_progress = on_progress or (lambda p: None)
        self.n_trials = config.n_trials
        if config.sampler["name"] == "grid":
            self.n_trials = min(self.n_trials, space.grid_size(config.parameters))
        self.progress = Progress(config.study, self.n_trials, timeout=config.timeout, gpu_budget=config.gpu_hours)
        self.trials: dict[int, optuna.Trial] = {}     # running here: number -> trial
        self.attrs: dict[int, dict[str, Any]] = {}    # running here: number -> user attrs at launch
        self.interrupts = 0
        self.storage = db.backend(study)
        db.enable_heartbeats(self.storage, config.heartbeat_interval, config.grace_period)
        self.checkpoints = self._checkpoint_store()
        self.artifacts = dashboard.artifact_store(config.checkpoint_store) if self.checkpoints else None
        self.removed: set[int] = set()                # configurations whose checkpoints are gone
        self.last_beat = 0.0
        self.last_count = 0.0
        self.counter = recovery.Counter(study.direction == optuna.study.StudyDirection.MAXIMIZE)
        self.kept: dict[int, float] = {}              # complete configurations whose checkpoints are kept: value

    def _checkpoint_store(self) -> CheckpointStore | None:
        location = self.config.checkpoint_store
        uid = self.study.user_attrs.get(UID_ATTR)
        if not location or not uid:    # a study from before checkpoints: retries start at epoch 0
            return None
        return CheckpointStore(location, f"{self.study.study_name}-{uid}")

    def _db(self, fn: Callable[[], Any]) -> Any:
        return db.with_retry(fn, timeout=self.config.database_timeout, on_wait=self._db_wait)

    def _db_wait(self, message: str) -> None:
        self.progress.last = message
        self.on_progress(self.progress)

    # -- budget -------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Counts for the live display only: at most once a second (launch decisions always count afresh)."""
        if time.monotonic() - self.last_count >= 1.0:
            self._count()

    def _count(self) -> recovery.Tally:
        p = self.progress
        self.last_count = time.monotonic()
        trials = self._db(lambda: self.study.get_trials(deepcopy=False))
        tally, best, seconds = self.counter.update(trials)
        if self.config.gpu_hours is not None:
            p.gpu_hours = seconds * self.config.gpus / 3600.0
        p.complete, p.pruned, p.failed = tally.complete, tally.pruned, tally.failed
        p.running, p.waiting, p.retried = tally.running, tally.waiting, tally.retried
        if best is not None:           # study.best_trial, without another query
            p.best_value, p.best_number = best.value, best.number
        return tally

    def _may_launch(self, tally: recovery.Tally) -> bool:
        p = self.progress
        if p.stopping:
            return False
        if self.config.timeout is not None and p.elapsed >= self.config.timeout:
            p.stopping, p.last = True, f"timeout of {self.config.timeout:g}s reached; letting running trials finish"
            p.stop_reason = p.last
            return False
        if p.gpu_budget is not None and p.gpu_hours is not None and p.gpu_hours >= p.gpu_budget:
            p.stopping = True
            p.last = (f"GPU-hour budget of {p.gpu_budget:g} reached ({p.gpu_hours:.4f} spent); "
                      "letting running trials finish")
            p.stop_reason = p.last
            return False
        return tally.waiting > 0 or tally.finished + tally.running + tally.waiting < self.n_trials

    def _done(self, tally: recovery.Tally) -> bool:
        """Nothing runs here, and nothing anywhere still needs a coordinator."""
        if self.trials:
            return False
        if self.progress.stopping:
            return True
        return tally.running == 0 and not self._may_launch(tally)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        import ray

        self._recover()
        tally = self._count()
        if tally.finished >= self.n_trials and tally.running == 0 and tally.waiting == 0:
            return self.summary()
        _start_ray(self.ray_address, self.config.backend)
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

    def _heartbeat(self) -> None:
        """Beat for our trials; fail and re-queue other coordinators' lost ones. Every heartbeat_interval."""
        if time.monotonic() - self.last_beat < self.config.heartbeat_interval:
            return
        self.last_beat = time.monotonic()
        for trial in list(self.trials.values()):
            self._db(lambda: self.storage.record_heartbeat(trial._trial_id))
        self._recover()

    def _recover(self) -> None:
        stale = self._db(lambda: db.stale_trial_ids(self.storage, self.study._study_id))
        if not stale:
            return
        lost = self._db(lambda: recovery.fail_stale(
            self.study, self.storage, stale, grace_period=self.config.grace_period,
            max_retries=self.config.max_retries, skip=set(self.trials)))
        if lost:
            self._count()
            self.progress.last = f"trial(s) {', '.join(map(str, lost))} lost their coordinator: queued again"
            self.on_progress(self.progress)

    def _loop(self) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        from workers.remote import DATASET_ERROR, ReportBroker, TrainerWorker

        cfg = self.config
        if self.arrays.skipped:
            shown = ", ".join(self.arrays.skipped[:3]) + (" ..." if len(self.arrays.skipped) > 3 else "")
            self.progress.last = f"skipped {len(self.arrays.skipped)} unreadable image(s): {shown}"
            self.on_progress(self.progress)
        broker = ray.remote(num_cpus=0)(ReportBroker).remote()
        worker_cls = ray.remote(self.worker or TrainerWorker).options(num_cpus=cfg.cpus, num_gpus=cfg.gpus,
                                                                      max_restarts=0, **worker_env(cfg.backend))
        threads = max(1, int(math.floor(cfg.cpus)))
        tally = self._count()
        slots = max(1, min(cfg.parallel, self.n_trials - tally.finished))
        idle = [worker_cls.remote(threads) for _ in range(slots)]
        # the test split never reaches a trial; a folder goes by path, read on each worker's machine
        data_ref = ray.put(datasets.reference(cfg.dataset.to_dict(), cfg.seed, self.arrays))
        in_flight: dict[Any, tuple[int, Any]] = {}     # result ref -> (trial number, worker)
        drain = None                                   # the broker's pending batch of reports
        ended: list[Callable[[], None]] = []           # finished trials' clean-up, after the next launch
        self.progress.last = f"starting {slots} worker(s)"
        self.on_progress(self.progress)

        while True:
            if self.interrupts >= 2:
                for task in ended:
                    task()
                for ref, (number, worker) in list(in_flight.items()):
                    ray.kill(worker)
                    self._tell(number, TrialResult(number, TrialState.FAILED, None, 0, "interrupted (Ctrl-C)"),
                               fault=False)
                return
            self._heartbeat()
            while idle:
                launched = self._db(self._launch)
                if launched is None:
                    break
                number, spec = launched
                worker = idle.pop()
                in_flight[worker.train.remote(spec, data_ref, broker)] = (number, worker)
                self.progress.last = f"trial {number} started" + (
                    f" (retry of trial {self.attrs[number][recovery.RETRY_OF]}, from epoch "
                    f"{self.attrs[number].get(recovery.START_EPOCH, 0)})" if recovery.RETRY_OF in self.attrs[number] else "")
                self._refresh()
                self.on_progress(self.progress)
            for task in ended:      # clean-up of finished trials, once the freed slots have their next trials
                task()
            ended.clear()
            if not in_flight and self._done(self._count()):
                return
            # wake on whichever comes first: an epoch report, a finished trial, or the poll interval
            if drain is None:
                drain = broker.drain.remote(self.POLL_SECONDS)
            ready, _ = ray.wait([drain, *in_flight], num_returns=1)
            if drain in ready or ray.wait([drain], timeout=0)[0]:
                for report in ray.get(drain):
                    decision = self._relay(report)
                    broker.decide.remote(report.number, report.epoch, decision)
                    self._save_checkpoint(report)    # stored before this trial's result can be told
                drain = None
            done, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0) if in_flight else ([], [])
            for ref in done:
                number, worker = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as e:
                    result = TrialResult(number, TrialState.FAILED, None, 0, f"worker lost: {_first_line(e)}")
                    worker = worker_cls.remote(threads)
                except RayTaskError as e:
                    result = TrialResult(number, TrialState.FAILED, None, 0, f"worker error: {_first_line(e)}")
                except RayError as e:   # out of memory, node lost, object lost
                    result = TrialResult(number, TrialState.FAILED, None, 0, f"worker lost: {_first_line(e)}")
                    ray.kill(worker)
                    worker = worker_cls.remote(threads)
                broker.release.remote(number)
                if not result.reason.startswith(DATASET_ERROR):
                    self._tell(number, result, fault=True, later=ended)
                    idle.append(worker)
                    continue
                # every trial would fail the same way: stop, leaving retries queued
                for task in ended:
                    task()
                self._tell(number, result, fault=False)
                for n, w in list(in_flight.values()):
                    ray.kill(w)
                    self._tell(n, TrialResult(n, TrialState.FAILED, None, 0, "stopped: a worker cannot read "
                                              "the dataset"), fault=False)
                raise SweepsError(f"trial {number}: {result.reason}; `sweeps resume` continues the sweep "
                                  "once every worker can read it")

    def _launch(self) -> tuple[int, TrialSpec] | None:
        """Under the study's launch lock: count, and ask only if the shared budget has room."""
        with db.launch_lock(self.storage, self.study._study_id):
            if not self._may_launch(self._count()):
                return None
            trial = self.study.ask()
            self.storage.record_heartbeat(trial._trial_id)
        return self._prepare(trial)

    def _prepare(self, trial: optuna.Trial) -> tuple[int, TrialSpec]:
        attrs = dict(trial.user_attrs)
        chosen = space.suggest(trial, self.config.parameters)
        seed = trial_seed(self.config.seed, recovery.config_id(trial.number, attrs))
        new_attrs: dict[str, Any] = {"seed": seed, "coordinator": COORDINATOR_ID}
        fixed = {k: v for k, v in chosen.items() if k not in trial.params}
        if fixed:
            new_attrs["fixed_params"] = fixed
        checkpoint = None
        folds = self.config.dataset.folds or 0
        if recovery.RETRY_OF in attrs and self.checkpoints is not None and not folds:   # folds start over
            checkpoint = self.checkpoints.load(recovery.config_id(trial.number, attrs))
        if checkpoint is not None:
            meta = read_meta(checkpoint)
            for epoch, value in sorted((int(k), v) for k, v in meta["values"].items()):
                trial.report(value, epoch)    # the learning curve continues where the last attempt stopped
            attrs[recovery.START_EPOCH] = new_attrs[recovery.START_EPOCH] = int(meta["epoch"])
        db.set_user_attrs(self.storage, trial._trial_id, new_attrs)
        self.trials[trial.number] = trial
        self.attrs[trial.number] = attrs
        spec = TrialSpec(number=trial.number, params=space.trial_params(chosen), epochs=self.config.epochs,
                         seed=seed, metric=self.config.metric, flip=self.config.dataset.flip,
                         threads=max(1, int(self.config.cpus)), checkpoint=checkpoint,
                         save_checkpoints=self.checkpoints is not None, deterministic=self.config.deterministic,
                         folds=folds, mixed_precision=self.config.mixed_precision,
                         jit_compile=self.config.jit_compile, steps_per_execution=self.config.steps_per_execution)
        return trial.number, spec

    def _relay(self, report: EpochReport) -> Decision:
        trial = self.trials.get(report.number)
        if trial is None:
            return Decision.PRUNE
        if not math.isfinite(report.value):
            return Decision.CONTINUE
        try:
            self._db(lambda: trial.report(report.value, report.epoch))
        except optuna.exceptions.UpdateFinishedTrialError:
            return Decision.PRUNE     # another coordinator took this trial for lost meanwhile
        if report.epoch >= self.config.steps:  # fully trained: keep it as a complete trial
            return Decision.CONTINUE
        return Decision.PRUNE if self._db(trial.should_prune) else Decision.CONTINUE

    def _save_checkpoint(self, report: EpochReport) -> None:
        """After the worker has its answer, so it trains on while the checkpoint is written."""
        if report.checkpoint is None or self.checkpoints is None or report.number not in self.attrs:
            return
        config_id = recovery.config_id(report.number, self.attrs[report.number])
        try:
            self.checkpoints.save(config_id, report.epoch, report.checkpoint)
        except Exception as e:  # the trial goes on; only a retry of it would start earlier
            self.progress.last = f"checkpoint of trial {report.number} not saved: {_first_line(e)}"

    def _tell(self, number: int, result: TrialResult, *, fault: bool,
              later: list[Callable[[], None]] | None = None) -> None:
        """Store the outcome now; the checkpoint clean-up and the progress line go to ``later`` when given
        (the loop runs them once the freed slot has its next trial)."""
        trial = self.trials.pop(number)
        attrs = self.attrs.pop(number)
        config_id = recovery.config_id(number, attrs)
        try:
            retried = self._db(lambda: self._store_result(trial, attrs, result, fault))
        except optuna.exceptions.UpdateFinishedTrialError:
            self.progress.last = f"trial {number} was taken for lost by another coordinator; its retry continues it"
            self.on_progress(self.progress)
            return
        if later is None:
            self._after_tell(number, config_id, result, retried)
        else:
            later.append(lambda: self._after_tell(number, config_id, result, retried))

    def _after_tell(self, number: int, config_id: int, result: TrialResult, retried: bool) -> None:
        if self.checkpoints is not None and not retried:
            self._prune_checkpoints(config_id, result.state)
        self._refresh()
        shown = f"{result.value:.4f}" if result.state == TrialState.COMPLETE and result.value is not None else (
            result.reason or result.state.value)
        self.progress.last = f"trial {number} {result.state.value}: {shown}" + (" (queued again)" if retried else "")
        self.on_progress(self.progress)

    def _store_result(self, trial: optuna.Trial, attrs: dict[str, Any], result: TrialResult, fault: bool) -> bool:
        """Write the outcome; for a failure, queue its retry. Safe to run again after a dropped connection."""
        try:      # refused once the trial is finished: only then is it read back, to learn who finished it
            db.set_user_attrs(self.storage, trial._trial_id, {
                "epochs_run": result.epochs_run, **({REASON_ATTR: result.reason} if result.reason else {}),
                **result.metrics})
        except optuna.exceptions.UpdateFinishedTrialError:
            frozen = self.storage.get_trial(trial._trial_id)
            if frozen.state == optuna.trial.TrialState.FAIL and frozen.user_attrs.get(REASON_ATTR, "").startswith(
                    "coordinator lost"):
                raise
            return False      # our own earlier attempt got through before the connection dropped
        if result.state == TrialState.COMPLETE and result.value is not None and math.isfinite(result.value):
            self._upload_confusion_matrix(trial, result)
            self.study.tell(trial, result.value)
            return False
        if result.state == TrialState.PRUNED:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return False
        if result.state == TrialState.COMPLETE:
            trial.set_user_attr(REASON_ATTR, "no finite metric was measured")
            fault = False
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if result.state == TrialState.COMPLETE:
            return False
        return recovery.enqueue_retry(self.study, trial.number, trial.params, attrs, fault=fault,
                                      max_retries=self.config.max_retries)

    def _upload_confusion_matrix(self, trial: optuna.Trial, result: TrialResult) -> None:
        """A PNG artifact on the trial, shown by optuna-dashboard; best effort, the result matters more."""
        matrix = result.metrics.get("confusion_matrix")
        if self.artifacts is None or not matrix:
            return
        import tempfile

        from optuna.artifacts import upload_artifact

        from sweeps.plots import confusion_matrix_png

        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = confusion_matrix_png(matrix, self.arrays.class_names, os.path.join(tmp, "confusion_matrix.png"),
                                            title=f"trial {trial.number}: validation confusion matrix")
                upload_artifact(study_or_trial=trial, file_path=path, artifact_store=self.artifacts,
                                mimetype="image/png")
        except Exception as e:
            self.progress.last = f"confusion matrix of trial {trial.number} not stored: {_first_line(e)}"

    def _prune_checkpoints(self, config_id: int, state: TrialState) -> None:
        """Keep checkpoints of the ``keep_best`` best complete trials only, so disk use stays bounded."""
        assert self.checkpoints is not None
        if state != TrialState.COMPLETE:
            self.checkpoints.remove(config_id)
            self.removed.add(config_id)
            return
        # complete trials as the counts have read them (the last count came after this trial was stored);
        # one that completed since can only push others further down, so none is removed too early
        for t in self.counter.take_completed():
            cid = recovery.config_id(t.number, t.user_attrs)
            if cid not in self.removed:
                self.kept[cid] = t.value
        ranked = sorted(self.kept, key=self.kept.__getitem__, reverse=self.counter.maximize)
        for cid in ranked[self.config.keep_best:]:
            self.checkpoints.remove(cid)
            self.removed.add(cid)
            del self.kept[cid]

    def summary(self) -> dict[str, Any]:
        p = self.progress
        return {
            "study": p.study, "n_trials": p.n_trials, "complete": p.complete, "pruned": p.pruned,
            "failed": p.failed, "retried": p.retried, "best_value": p.best_value, "best_trial": p.best_number,
            "best_params": self.study.best_trial.params if p.best_number is not None else None,
            "elapsed_seconds": round(p.elapsed, 1), "budget_met": p.finished >= p.n_trials,
            "gpu_hours": p.gpu_hours, "gpu_hours_budget": p.gpu_budget,
            "stopped_by": p.stop_reason or None,
        }


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def worker_env(backend: str) -> dict[str, Any]:
    """Ray actor options that start a trial slot's process on the configured Keras backend.

    JAX allocates GPU memory as it needs it (not 75 % up front), so packed
    trials share a GPU the way TensorFlow's memory growth lets them.
    """
    if backend == "tensorflow":
        return {}
    return {"runtime_env": {"env_vars": {"KERAS_BACKEND": backend, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}}}


def _start_ray(address: str | None, backend: str = "tensorflow") -> None:
    """A private local Ray on loopback, or the cluster at ``address``."""
    import importlib.util

    import ray

    module, name, extra = {"tensorflow": ("tensorflow", "TensorFlow", "'sweeps[tf]' (or 'sweeps[gpu]')"),
                           "jax": ("jax", "JAX", "'sweeps[jax]'")}[backend]
    if not address and (importlib.util.find_spec(module) is None or importlib.util.find_spec("keras") is None):
        raise SweepsError(f"{name} is not installed here, and the local Ray workers need it to train: "
                          f"pip install {extra}, or send trials to a cluster that has it with --ray-address")

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")   # no usage reports home (and a second faster start)
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
