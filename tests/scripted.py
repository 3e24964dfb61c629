"""A trainer without TensorFlow, for the coordinator's and the dispatchers' fast tests.

Its per-epoch values come from a formula of the parameters (best near
learning_rate 1e-2), it sends real checkpoints (``workers/checkpoint.py``,
tiny arrays) and resumes from them as the real trainer does, and hooks let a
test act at any epoch: raise, return a failed result, send a signal.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from workers import checkpoint as ckpt
from workers.spec import Decision, EpochReport, Reporter, TrialResult, TrialSpec, TrialState, better

Hook = Callable[[TrialSpec, int], "TrialResult | None"]


def curve(params: dict[str, Any], epoch: int) -> float:
    """A learning curve that rises with the epochs towards a ceiling set by the learning rate."""
    ceiling = max(0.05, 1.0 - abs(math.log10(params["learning_rate"]) + 2.0) / 5.0)
    return round(ceiling * (1.0 - 0.5 ** epoch), 6)


class Scripted:
    """``(spec, data, reporter) -> TrialResult``, the real trainer's signature; records what it saw."""

    def __init__(self, value: Callable[[dict[str, Any], int], float] = curve, on_epoch: Hook | None = None,
                 delay: float = 0.0, weights: int = 2,
                 measures: Callable[[dict[str, Any]], dict[str, float]] | None = None,
                 bonus: dict[int, float] | None = None,
                 logs: Callable[[TrialSpec, int], dict[str, Any]] | None = None) -> None:
        self.value, self.on_epoch, self.delay = value, on_epoch, delay
        self.bonus = bonus or {}          # trial number -> added to every value it reports (a lucky seed)
        self.logs = logs                  # more Keras logs per epoch (e.g. val_classes_predicted)
        self.measures = measures          # what a complete trial measures besides accuracy (latency, size)
        self.weights = weights            # float32 "weights" in each checkpoint: its size
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.decisions: dict[int, list[Decision]] = defaultdict(list)
        self.first_epoch: dict[int, int] = {}       # trial number -> the first epoch it trained

    def __call__(self, spec: TrialSpec, data: Any, reporter: Reporter) -> TrialResult:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            return self._train(spec, reporter)
        finally:
            with self.lock:
                self.running -= 1

    def _train(self, spec: TrialSpec, reporter: Reporter) -> TrialResult:
        values: dict[int, float] = {}
        best, best_epoch, start = None, 0, 0
        if spec.checkpoint:
            state = ckpt.unpack(spec.checkpoint)
            values, best, best_epoch, start = dict(state.values), state.best, state.best_epoch, state.epoch
        self.first_epoch[spec.number] = start + 1
        for epoch in range(start + 1, spec.epochs + 1):
            time.sleep(self.delay)
            ended = self.on_epoch(spec, epoch) if self.on_epoch else None
            if ended is not None:
                return ended
            value = self.value(spec.params, epoch) + self.bonus.get(spec.number, 0.0)
            values[epoch] = value
            if better(value, best, spec.maximize):
                best, best_epoch = value, epoch
            state = (ckpt.pack(ckpt.Checkpoint(epoch, [np.full(self.weights, epoch, "float32")], [], best, best_epoch, None,
                                               values)) if spec.save_checkpoints else None)
            logs = {spec.metric: value, **(self.logs(spec, epoch) if self.logs else {})}
            decision = reporter.report(EpochReport(spec.number, epoch, value, logs, state))
            self.decisions[spec.number].append(decision)
            if decision == Decision.PRUNE:
                return TrialResult(spec.number, TrialState.PRUNED, best, epoch, f"pruned after epoch {epoch}")
        return TrialResult(spec.number, TrialState.COMPLETE, best, spec.epochs, "",
                           {"accuracy": best, **(self.measures(spec.params) if self.measures else {})})


class ScriptedWorker:
    """A Ray trial slot that trains with ``Scripted`` (the contract test runs it through ``RayDispatcher``).

    ``spec.params["script"]`` picks what the trial does: ``"ok"``, ``"raise"`` (an exception at epoch 2),
    ``"exit"`` (the process dies at epoch 2, as a killed worker would), ``"slow"`` (0.2 s per epoch).
    """

    def __init__(self, threads: int = 1) -> None:
        pass

    def train(self, spec: TrialSpec, data: Any, broker: Any) -> TrialResult:
        from workers import attempt
        from workers.remote import BrokerReporter

        return attempt.run(Scripted(on_epoch=script_hook), spec, data, BrokerReporter(broker))[0]


def script_hook(spec: TrialSpec, epoch: int) -> TrialResult | None:
    script = spec.params.get("script", "ok")
    if script == "slow":
        time.sleep(0.2)
    if epoch == 2 and script == "raise":
        raise ValueError("scripted failure")
    if epoch == 2 and script == "exit":
        import os

        os._exit(1)
    return None

