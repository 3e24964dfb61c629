"""ask -> dispatch -> relay reports and prune decisions -> tell: a short loop of named steps.

The only process that talks to the study storage: it asks Optuna for a trial (or continues a paused
one), hands its spec to a dispatcher (Ray actors, or threads in tests), answers each epoch's report
(pruning.py) and tells Optuna how the trial ended; then the finalists. Database calls go through ``_db``
(retried while the database is away); lost trials of other coordinators are failed and queued again;
failures retry from checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from sweeps import board, finalists, recovery, space
from sweeps import storage as db
from sweeps import study as schema
from sweeps.artifacts import artifact_store
from sweeps.budget import Budget
from sweeps.checkpoints import Checkpoints, CheckpointStore
from sweeps.config import SweepConfig
from sweeps.dispatch import Dispatcher
from sweeps.errors import EXIT_CODES, SweepFailed, SweepsError
from sweeps.outcome import Outcomes
from sweeps.progress import Progress, ProgressCallback
from sweeps.pruning import Pruning
from workers import data as datasets
from workers.checkpoint import read_meta
from workers.spec import Decision, EpochReport, Failure, TrialResult, TrialSpec, TrialState

COORDINATOR_ID = f"{socket.gethostname()}:{os.getpid()}"   # which process ran a trial (user attr "coordinator")

# Optuna warns that its heartbeat is meant for optimize(); with ask/tell the coordinator beats itself.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


class Coordinator:
    """Keeps ``parallel`` trials in flight until the budget is met or a stop is asked for."""

    POLL_SECONDS = 0.2

    def __init__(self, study: optuna.Study, config: SweepConfig, arrays: datasets.Arrays, dispatcher: Dispatcher, *,
                 on_progress: ProgressCallback | None = None) -> None:
        self.study = study
        self.config = config
        self.arrays = arrays
        self.dispatcher = dispatcher
        self.on_progress = on_progress or (lambda p: None)
        self.progress = Progress(config.study, Budget.trials(config), timeout=config.timeout,
                                 gpu_budget=config.gpu_hours)
        self.budget = Budget(config, self.progress)
        self.trials: dict[int, optuna.Trial] = {}     # running here: number -> trial
        self.attrs: dict[int, dict[str, Any]] = {}    # running here: number -> user attrs at launch
        self.interrupts = 0
        self.stop_signal = "Ctrl-C"                   # what stopped the running trials (interrupts == 2)
        self.storage = db.backend(study)
        db.enable_heartbeats(self.storage, config.heartbeat_interval, config.grace_period)
        key = schema.checkpoint_key(study)
        self.checkpoints = Checkpoints(CheckpointStore(config.checkpoint_store, key), config.keep_best,
                                       schema.maximize(study), study.user_attrs.get(schema.STORE_ERRORS_ATTR)) \
            if config.checkpoint_store and key else None
        self.outcomes = Outcomes(study, self.storage, config,
                                 artifact_store(config.checkpoint_store) if self.checkpoints else None,
                                 arrays.class_names, self._note)
        self.counter = recovery.Counter(schema.maximize(study))
        self.stalls = recovery.StallWatch(config.stall_timeout)
        self.best: optuna.trial.FrozenTrial | None = None    # the best complete trial, as the counts read it
        self.last_beat = self.last_count = 0.0
        self.deferred: list[Callable[[], None]] = []   # finished trials' clean-up, after the next launch
        skipped = arrays.skipped                       # notices: said when the trials start
        self.notices = [f"skipped {len(skipped)} unreadable image(s): " + ", ".join(skipped[:3])
                        + (" ..." if len(skipped) > 3 else "")] if skipped else []
        self.board = board.for_study(config, key, self._note)     # TensorBoard logs, or nothing
        self.pruning = Pruning(study, config, can_pause=self.checkpoints is not None, say=self._note)
        if self.board.logdir:
            self.notices.append(f"TensorBoard: tensorboard --logdir {self.board.logdir}")

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run trials until the budget is met or a stop; the summary, or ``SweepFailed`` when trials keep failing."""
        self._recover()
        tally = self._count()
        if not self.budget.met(tally):         # else no Ray is started: nothing is left to run
            self._run_trials(tally)
            self._count()
        best = self._db(lambda: schema.best_trial(self.study)) or self.best    # the finalists' winner, once they ran
        summary = self.progress.summary(best, [name for name, _ in self.config.all_objectives])
        if self.interrupts:
            return {**summary, "interrupted": True, "signal": self.stop_signal}
        problem = self.budget.failed_sweep(self._db(lambda: self.study.get_trials(deepcopy=False)))
        if problem:
            raise SweepFailed(problem)
        return summary

    def _run_trials(self, tally: recovery.Tally) -> None:
        slots = self.budget.slots(tally)
        handlers: dict[int, Any] = {}
        try:
            # the test split never reaches a trial; a folder goes by path, read on each worker's machine
            self.dispatcher.start(slots, datasets.reference(self.config.dataset.to_dict(), self.config.seed,
                                                            self.arrays))
            handlers = self._take_signals()     # after Ray's start: ray.init sets a SIGTERM handler of its own
            for line in self.notices:
                self._say(line)
            self._say(f"starting {slots} worker(s)")
            while self.step():
                pass
        finally:
            for signum, previous in handlers.items():
                signal.signal(signum, previous)
            self.dispatcher.close()
            self.board.close()
        self._store_errors()

    def step(self) -> bool:
        """One turn: beat, fill idle slots, clean up, then relay what the workers said. False once over here."""
        if self.interrupts >= 2:
            self._abort(f"interrupted ({self.stop_signal})", Failure.INTERRUPTED)
            return False
        self._heartbeat()
        self._fill_idle_slots()
        self._run_deferred()
        if not self.trials and self.budget.met(self._count()):
            return not self.progress.stopping and self._db(self._queue_finalists) > 0
        reports, results = self.dispatcher.poll(self.POLL_SECONDS)
        self._relay_reports(reports)
        self._collect_results(results)
        self._stop_stalled()
        return True

    def _take_signals(self) -> dict[int, Any]:
        """Ctrl-C once: start nothing new; twice, or SIGTERM / SIGHUP: stop now. Only the main thread may."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {signum: signal.signal(signum, handler) for signum, handler in (
            (signal.SIGINT, self._interrupt), (signal.SIGTERM, self._terminate), (signal.SIGHUP, self._terminate))}

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.interrupts += 1
        self.progress.stopping = True
        self.progress.last = ("stopping: no new trials; running ones finish (Ctrl-C again to stop them now)"
                              if self.interrupts == 1 else "stopping now: running trials are recorded as interrupted")

    def _terminate(self, signum: int, frame: Any) -> None:
        """SIGTERM (docker stop, Kubernetes, a scheduler) or SIGHUP: as a second Ctrl-C."""
        self.interrupts, self.stop_signal = 2, signal.Signals(signum).name
        self.progress.stopping = True
        self.progress.last = f"{self.stop_signal}: stopping now; running trials are recorded as interrupted"

    def _say(self, line: str) -> None:
        self.progress.last = line
        self.on_progress(self.progress)

    def _note(self, line: str) -> None:       # a line for the display's next update (no update of its own)
        self.progress.last = line

    # -- the named steps ----------------------------------------------------------------------
    def _fill_idle_slots(self) -> None:
        while self.dispatcher.idle():
            spec = self._db(self._launch)
            if spec is None:
                return
            self.dispatcher.launch(spec)
            self.stalls.started(spec.number, time.monotonic())
            attrs = self.attrs[spec.number]
            retry = (f" (retry of trial {attrs[schema.RETRY_OF]}, from epoch {attrs.get(schema.START_EPOCH, 0)})"
                     if schema.RETRY_OF in attrs else "")
            self._refresh()
            self._say(f"trial {spec.number} started{retry}")

    def _run_deferred(self) -> None:
        tasks, self.deferred = self.deferred, []
        for task in tasks:
            task()

    def _stop_stalled(self) -> None:
        """Trials silent past the stall limit: their process replaced, failed as stalled, retried like a lost worker."""
        limit = self.stalls.limit()
        for number in self.stalls.stalled(time.monotonic()):
            shown = f"{limit:.0f}s" if limit >= 10 else f"{limit:.1f}s"
            result = self.dispatcher.stop(number, f"stalled: no report for {shown}", Failure.STALLED)
            if result is not None:
                self._tell(result, fault=True)

    def _relay_reports(self, reports: list[EpochReport]) -> None:
        for report in reports:
            self.stalls.reported(report.number, time.monotonic())
            self.dispatcher.decide(report.number, report.epoch, self._relay(report))
            self._save_checkpoint(report)    # stored before this trial's result can be told

    def _collect_results(self, results: list[TrialResult]) -> None:
        """Tell every result of the batch (poll has handed them over), then stop if a worker cannot read the data."""
        unreadable = [r for r in results if r.failure == Failure.DATASET]
        for result in results:
            if result.failure != Failure.DATASET:
                self._tell(result, fault=result.failure is None or result.failure.is_fault, defer=True)
        if unreadable:
            self._stop_unreadable_dataset(unreadable)

    def _abort(self, reason: str, failure: Failure) -> None:
        """Fail everything in flight (not the configurations' fault: their retries are queued)."""
        self._run_deferred()
        for result in self.dispatcher.stop_all(reason, failure):
            self._tell(result, fault=False)

    def _stop_unreadable_dataset(self, results: list[TrialResult]) -> None:
        """Every trial would fail the same way: stop, leaving retries queued for `sweeps resume`."""
        self._run_deferred()
        for result in results:
            self._tell(result, fault=False)
        self._abort("stopped: a worker cannot read the dataset", Failure.INTERRUPTED)
        raise SweepsError(f"trial {results[0].number}: {results[0].reason}; `sweeps resume` continues the sweep "
                          "once every worker can read it")

    # -- counting, heartbeats, recovery -------------------------------------------------------
    def _db(self, fn: Callable[[], Any]) -> Any:
        return db.with_retry(fn, timeout=self.config.database_timeout, on_wait=self._say, stop=self._stop_now)

    def _stop_now(self) -> tuple[str, int] | None:
        """While the database is away: the signal that stopped the sweep (any Ctrl-C, SIGTERM, SIGHUP), its exit code."""
        return (self.stop_signal, EXIT_CODES[self.stop_signal]) if self.interrupts else None

    def _refresh(self) -> None:
        """Counts for the live display only: at most once a second (launch decisions always count afresh)."""
        if time.monotonic() - self.last_count >= 1.0:
            self._count()

    def _count(self) -> recovery.Tally:
        p = self.progress
        self.last_count = time.monotonic()
        trials = self._db(lambda: self.study.get_trials(deepcopy=False))
        tally, best, seconds = self.counter.update(trials)
        self.budget.plan_reserve(self.counter.durations, trials, self.counter.maximize)
        if self.config.gpu_hours is not None:
            p.gpu_hours = seconds * self.config.gpus / 3600.0
        p.complete, p.pruned, p.failed = tally.complete, tally.pruned, tally.failed
        p.running, p.waiting, p.retried = tally.running, tally.waiting, tally.retried
        if best is not None:           # study.best_trial, without another query
            self.best = best
            p.best_value, p.best_number = schema.first_value(best), best.number
        return tally

    def _heartbeat(self) -> None:
        """Beat for our trials; fail and re-queue other coordinators' lost ones. Every heartbeat_interval."""
        if time.monotonic() - self.last_beat < self.config.heartbeat_interval:
            return
        self.last_beat = time.monotonic()
        for trial in list(self.trials.values()):
            self._db(functools.partial(self.storage.record_heartbeat, trial._trial_id))
        self._store_errors()
        self._recover()

    def _recover(self) -> None:
        """Fail and queue again the trials whose coordinator is gone (or that never had one beating)."""
        lost = self._db(self._fail_lost)
        if lost:
            self._count()
            self._say(f"trial(s) {', '.join(map(str, lost))} lost their coordinator: queued again")

    def _fail_lost(self) -> list[int]:
        with db.launch_lock(self.storage, self.study._study_id):     # no coordinator is between ask and beat
            stale = db.stale_trial_ids(self.storage, self.study._study_id, self.config.grace_period)
            if not stale:
                return []
            return recovery.fail_stale(self.study, self.storage, stale, grace_period=self.config.grace_period,
                                       max_retries=self.config.max_retries, skip=set(self.trials))

    def _queue_finalists(self, locked: bool = False) -> int:
        """Search over (or a timeout's reserve reached): paused checkpoints freed, finalists (then late joiners) queued."""
        with contextlib.nullcontext() if locked else db.launch_lock(self.storage, self.study._study_id):
            runs, line = finalists.queue(self.study, self.config, self.study.get_trials(deepcopy=False),
                                         self.budget.time_left(), self.budget.in_reserve())
        self.pruning.release(self.checkpoints.retention if self.checkpoints else None)
        if line:
            self._say(line)
        return runs

    # -- one trial: launch, relay, tell -------------------------------------------------------
    def _launch(self) -> TrialSpec | None:
        """Under the study's launch lock: count, and ask only if the shared budget has room."""
        with db.launch_lock(self.storage, self.study._study_id):
            tally = self._count()
            if self.budget.open(tally) and (self.pruning.promote() is not None     # promotions go first
                                            or self.budget.in_reserve() and self._queue_finalists(locked=True)):
                tally = self._count()
            if not self.budget.may_launch(tally):
                return None
            trial = self.study.ask()
            self.storage.record_heartbeat(trial._trial_id)
        return self._prepare(trial)

    def _prepare(self, trial: optuna.Trial) -> TrialSpec:
        attrs = dict(trial.user_attrs)
        chosen = space.suggest(trial, self.config.parameters)
        config_id = schema.config_id(trial.number, attrs)
        seed = schema.trial_seed(self.config.seed, config_id)
        new_attrs: dict[str, Any] = {schema.SEED: seed, schema.COORDINATOR: COORDINATOR_ID}
        fixed = {k: v for k, v in chosen.items() if k not in trial.params}
        if fixed:
            new_attrs[schema.FIXED_PARAMS] = fixed
        checkpoint = None
        if ({schema.RETRY_OF, schema.CONTINUES} & attrs.keys() and self.checkpoints is not None
                and not self.config.dataset.folds):
            checkpoint, note, say = self.checkpoints.resume_point(config_id)     # cross-validation starts over
            if note:                   # kept in the reason whatever the trial's own turns out to be
                new_attrs[schema.REASON] = new_attrs[schema.CHECKPOINT_NOTE] = attrs[schema.CHECKPOINT_NOTE] = note
            if say:
                self._say(say)
        earlier: dict[int, float] = {}
        if checkpoint is not None:
            meta = read_meta(checkpoint)
            earlier = {int(k): v for k, v in meta["values"].items()}
            for epoch, value in sorted(earlier.items()):
                self.study._storage.set_trial_intermediate_value(trial._trial_id, epoch, value)   # the curve goes on
            attrs[schema.START_EPOCH] = new_attrs[schema.START_EPOCH] = int(meta["epoch"])
        self.board.start(trial.number, chosen, earlier)
        db.set_user_attrs(self.storage, trial._trial_id, new_attrs)
        self.trials[trial.number] = trial
        self.attrs[trial.number] = attrs
        return self.config.trial_spec(trial.number, chosen, seed, checkpoint=checkpoint,
                                      save_checkpoints=self.checkpoints is not None)

    def _relay(self, report: EpochReport) -> Decision:
        trial = self.trials.get(report.number)
        if trial is None:
            return Decision.PRUNE
        if not math.isfinite(report.value):
            return Decision.CONTINUE
        try:       # the storage's own call: Trial.report refuses a study with several objectives
            self._db(lambda: self.study._storage.set_trial_intermediate_value(trial._trial_id, report.epoch,
                                                                              report.value))
        except optuna.exceptions.UpdateFinishedTrialError:
            return Decision.PRUNE     # another coordinator took this trial for lost meanwhile
        self.board.epoch(report)
        if report.epoch >= self.config.steps:  # fully trained: keep it as a complete trial
            return Decision.CONTINUE
        return self._db(lambda: self.pruning.decide(trial, self.attrs[report.number], report))

    def _save_checkpoint(self, report: EpochReport) -> None:
        """After the worker has its answer, so it trains on while the checkpoint is written."""
        if report.checkpoint is None or self.checkpoints is None or report.number not in self.attrs:
            return
        problem = self.checkpoints.save(schema.config_id(report.number, self.attrs[report.number]), report.epoch,
                                        report.checkpoint)
        if problem:
            self._say(problem)

    def _store_errors(self) -> None:
        """The checkpoint store's failures, for `sweeps status` (when there are new ones)."""
        checkpoints = self.checkpoints
        if checkpoints is not None and checkpoints.unsaved:
            self._db(lambda: self.study.set_user_attr(schema.STORE_ERRORS_ATTR, dict(checkpoints.errors)))
            checkpoints.unsaved = False

    def _tell(self, result: TrialResult, *, fault: bool, defer: bool = False) -> None:
        """Store the outcome now; the checkpoint clean-up and the progress line run now, or after the
        next launch when ``defer`` (so a freed slot gets its next trial first)."""
        number = result.number
        self.stalls.forget(number)
        trial = self.trials.pop(number)
        attrs = self.attrs.pop(number)
        result = self.pruning.told(result, attrs)
        self.board.end(result)
        try:
            retried = self._db(lambda: self.outcomes.store(trial, attrs, result, fault))
        except optuna.exceptions.UpdateFinishedTrialError:
            self._say(f"trial {number} was taken for lost by another coordinator; its retry continues it")
            return
        kept = retried or schema.PAUSED_AT in attrs
        after = lambda: self._after_tell(result, schema.config_id(number, attrs), kept)   # noqa: E731
        if defer:
            self.deferred.append(after)
        else:
            after()

    def _after_tell(self, result: TrialResult, config_id: int, kept: bool) -> None:
        """``kept``: the configuration goes on (a retry, or a paused trial's continuation): its checkpoint stays."""
        self._db(self.pruning.store_plan) if result.state == TrialState.COMPLETE else None
        if self.checkpoints is not None and not kept:
            if result.state == TrialState.COMPLETE:   # as the counts read them: this one, and any since
                done = {schema.config_id(t.number, t.user_attrs): t.values[0] for t in self.counter.take_completed()}
                self.checkpoints.retention.rank(done, self._db(lambda: schema.ensembled(self.study, self.config)))
            else:
                self.checkpoints.retention.discard(config_id)
        self._refresh()
        shown = f"{result.value:.4f}" if result.state == TrialState.COMPLETE and result.value is not None else (
            result.reason or result.state.value)
        self._say(f"trial {result.number} {result.state.value}: {shown}" + (" (queued again)" if result.failure and kept
                                                                             else ""))
