"""How a finished trial is written to the study: its attributes, ``tell``, the retry of a failure, and its
confusion matrix as an artifact optuna-dashboard shows. Safe to run again after a dropped connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from sweeps import objectives, recovery
from sweeps import storage as db
from sweeps import study as schema
from sweeps.artifacts import upload_confusion_matrix
from sweeps.config import SweepConfig
from sweeps.errors import first_line
from workers.spec import Failure, TrialResult, TrialState


class Outcomes:
    """Writes outcomes for one coordinator; ``note`` takes a line for the display (a failed upload)."""

    def __init__(self, study: optuna.Study, storage: Any, config: SweepConfig, artifacts: Any,
                 class_names: tuple[str, ...], note: Callable[[str], None]) -> None:
        self.study, self.storage, self.max_retries = study, storage, config.max_retries
        self.objectives = [name for name, _ in config.all_objectives]
        self.constraints = config.constraints
        self.artifacts, self.class_names, self.note = artifacts, class_names, note

    def store(self, trial: optuna.Trial, attrs: dict[str, Any], result: TrialResult, fault: bool) -> bool:
        """Write the outcome; for a failure, queue its retry (True when one was queued). Raises
        UpdateFinishedTrialError when another coordinator took the trial for lost meanwhile."""
        try:      # refused once the trial is finished: only then is it read back, to learn who finished it
            reason = "; ".join(r for r in (result.reason, attrs.get(schema.CHECKPOINT_NOTE, "")) if r)
            db.set_user_attrs(self.storage, trial._trial_id, {
                schema.EPOCHS_RUN: result.epochs_run, **({schema.REASON: reason} if reason else {}),
                **({schema.FAILURE: result.failure.value} if result.failure else {}), **result.metrics})
        except optuna.exceptions.UpdateFinishedTrialError:
            frozen = self.storage.get_trial(trial._trial_id)
            if (frozen.state == optuna.trial.TrialState.FAIL
                    and frozen.user_attrs.get(schema.FAILURE) == Failure.COORDINATOR_LOST.value):
                raise
            return False      # our own earlier attempt got through before the connection dropped
        if result.state in (TrialState.COMPLETE, TrialState.PRUNED):
            broken = objectives.set_constraints(trial, self.constraints, result.metrics)
            if broken and result.state == TrialState.COMPLETE:
                self.note(f"trial {trial.number} breaks the constraint on {', '.join(broken)}: it stays out of "
                          "the best trials")
        told = objectives.values(self.objectives, result.value, result.metrics)
        missing = objectives.unmeasured(self.objectives, told)
        if result.state == TrialState.COMPLETE and missing is None:
            self._upload_confusion_matrix(trial, result)
            self.study.tell(trial, [float(v) for v in told if v is not None])   # all measured here
            return False
        if result.state == TrialState.PRUNED:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return False
        if result.state == TrialState.COMPLETE:       # nothing finite was measured: retrying will not help
            trial.set_user_attr(schema.REASON, missing)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return False
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return recovery.enqueue_retry(self.study, trial.number, trial.params, attrs, fault=fault,
                                      max_retries=self.max_retries)

    def _upload_confusion_matrix(self, trial: optuna.Trial, result: TrialResult) -> None:
        """A PNG artifact on the trial; best effort, the result matters more."""
        matrix = result.metrics.get("confusion_matrix")
        if self.artifacts is None or not matrix:
            return
        try:
            upload_confusion_matrix(self.artifacts, trial, matrix, self.class_names)
        except Exception as e:
            self.note(f"confusion matrix of trial {trial.number} not stored: {first_line(e)}")
