"""The coordinator's side of pruning: the pruner's word at an epoch, turned into a stop, a pause or an audit;
paused trials promoted when a slot is free; the rungs in use written where `status` and `report` read them.

- **Audit** (``pruner.audit``, a share): a trial the pruner would stop runs on
  anyway, marked ``audited`` with the epoch; once enough audited trials
  finished, ``audit_summary`` says how many would have ended in the top
  quarter: the false-prune rate a user weighs pruning by. Which
  configurations are audited is decided by the study seed, so a resume
  picks the same ones.
- **Pause** (``asha`` and ``auto``, ``pause: true`` by default, when the
  sweep keeps checkpoints): a "no" at a rung pauses the trial (PRUNED,
  ``paused_at``); ``promote`` queues its continuation (``continues``, the
  same configuration, resumed from the rung's checkpoint) once it ranks in
  the top 1/eta of its rung. Promotions go before new trials: the rule of
  ASHA as published, and budget-neutral (the continuation counts instead of
  the paused trial).
- **One-class epochs**: an epoch whose validation predictions are all one
  class is recorded (``one_class_epochs``), said, left out of automatic rung
  placement, and named in the reason of a trial pruned on it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps import rungs
from sweeps import storage as db
from sweeps import study as schema
from sweeps.config import SweepConfig
from sweeps.objectives import first_objective
from workers.spec import Decision, EpochReport, TrialResult
from workers.spec import TrialState as State


class Pruning:
    """Answers for one coordinator; ``say`` takes a line for the display."""

    def __init__(self, study: optuna.Study, config: SweepConfig, *, can_pause: bool, say: Callable[[str], None]) -> None:
        self.study, self.config, self.say = study, config, say
        self.storage = db.backend(study)
        opts = config.pruner
        self.audit_share = float(opts.get("audit", 0.0))
        self.eta = int(opts.get("reduction_factor", 3))
        self.rung_pruner = study.pruner if isinstance(study.pruner, rungs.RungPruner) else None
        self.pausing = can_pause and self.rung_pruner is not None and bool(opts.get("pause", True))
        self.shown: dict[str, Any] | None = study.user_attrs.get(schema.RUNGS_ATTR)

    def decide(self, trial: optuna.Trial, attrs: dict[str, Any], report: EpochReport) -> Decision:
        """The answer to one epoch's report (its value is stored already)."""
        if schema.FINALIST_OF in attrs or schema.AUDITED in attrs:
            return Decision.CONTINUE
        new: dict[str, Any] = {}
        if report.logs.get("val_classes_predicted") == 1:
            new[schema.ONE_CLASS] = [*attrs.get(schema.ONE_CLASS, []), report.epoch]
            self.say(f"trial {report.number} epoch {report.epoch}: every validation image predicted as one class")
        prune = self.study.pruner.prune(first_objective(self.study), self.storage.get_trial(trial._trial_id))
        if prune and self.audited(schema.config_id(trial.number, attrs)):
            new[schema.AUDITED] = report.epoch
            self.say(f"trial {report.number} would be pruned after epoch {report.epoch}: runs on, audited")
        elif prune and self.pausing and report.epoch in self.plan().rungs:
            new[schema.PAUSED_AT] = report.epoch
        if new:
            attrs.update(new)
            db.set_user_attrs(self.storage, trial._trial_id, new)
        return Decision.PRUNE if prune and schema.AUDITED not in new else Decision.CONTINUE

    def audited(self, config_id: int) -> bool:
        """Whether the configuration runs on past a prune: the study seed decides, the same on every resume."""
        return self.audit_share > 0 and random.Random(f"{self.config.seed}:{config_id}").random() < self.audit_share

    def told(self, result: TrialResult, attrs: dict[str, Any]) -> TrialResult:
        """The reason a paused trial or one pruned on a one-class epoch is stored with."""
        if result.state != State.PRUNED or not result.reason.startswith("pruned after epoch"):
            return result
        if schema.PAUSED_AT in attrs:
            epoch = int(attrs[schema.PAUSED_AT])
            k = 1 + sum(r < epoch for r in self.plan().rungs)
            return replace(result, reason=f"paused at rung {k} (epoch {epoch}): below the top 1/{self.eta} there; "
                                          "continued if later trials rank it in it")
        if result.epochs_run in attrs.get(schema.ONE_CLASS, []):
            return replace(result, reason=result.reason + "; that epoch predicted one class for every validation image")
        return result

    def promote(self) -> int | None:
        """Under the launch lock: queue the continuation of the paused trial that is due first; its number."""
        if not self.pausing:
            return None
        due = rungs.promotable(self.study.get_trials(deepcopy=False), self.eta, schema.maximize(self.study))
        if not due:
            return None
        paused = due[0]
        self.study.enqueue_trial(dict(paused.params), user_attrs=rungs.continuation_attrs(paused), skip_if_exists=False)
        return paused.number

    def release(self, retention: Any) -> None:
        """The search is over: paused trials that were not continued never will be; their checkpoints go."""
        if retention is None or not self.pausing:
            return
        trials = self.study.get_trials(deepcopy=False)
        continued = {t.user_attrs[schema.CONTINUES] for t in trials if schema.CONTINUES in t.user_attrs}
        for t in trials:
            if schema.PAUSED_AT in t.user_attrs and t.number not in continued and t.state == TrialState.PRUNED:
                retention.discard(schema.config_id(t.number, t.user_attrs))

    def plan(self) -> rungs.RungPlan:
        assert self.rung_pruner is not None
        return self.rung_pruner.plan(first_objective(self.study))

    def store_plan(self) -> None:
        """The rungs in use, for `status` and `report`, when they changed (auto rungs move as trials finish)."""
        if self.rung_pruner is None:
            return
        plan = self.plan()
        if plan.to_dict() != self.shown:
            self.shown = plan.to_dict()
            self.study.set_user_attr(schema.RUNGS_ATTR, self.shown)
            self.say(plan.describe())


def audit_summary(trials: list[FrozenTrial], maximize: bool) -> dict[str, Any] | None:
    """Audited trials that finished, and how many ended in the top quarter of the complete ones (the pruner's
    false prunes); None when no trial was audited."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values
                and schema.FINALIST_OF not in t.user_attrs and schema.FORKED_FROM not in t.user_attrs]
    audited = [t for t in complete if schema.AUDITED in t.user_attrs]
    running = sum(schema.AUDITED in t.user_attrs and t.state == TrialState.RUNNING for t in trials)
    if not audited and not running:
        return None
    top_quarter = in_top_quarter([t.values[0] for t in complete], maximize)
    top = [t.number for t in audited if top_quarter(t.values[0])]
    return {"audited": len(audited), "running": running, "in_top_quarter": len(top), "trials": top,
            "false_prune_rate": round(len(top) / len(audited), 3) if audited else None}


def in_top_quarter(values: list[float], maximize: bool) -> Callable[[float], bool]:
    """Whether a final value is among the best quarter of ``values`` (at least the best one): what the audit
    calls a false prune."""
    ranked = sorted(values, reverse=maximize)
    if not ranked:
        return lambda value: False
    cut = ranked[max(1, len(ranked) // 4) - 1]
    return lambda value: value >= cut if maximize else value <= cut
