"""TensorBoard logs of a study: every trial's per-epoch metrics and its hyperparameters (the HParams plugin).

Written by the coordinator from the reports it already receives (workers
write nothing), one run folder per trial (``trial-0007``) under the study's
log folder, plus the experiment's HParams config at its root, so
``tensorboard --logdir DIR`` shows the curves, and the HParams tab the
parameters against the objectives. Needs the optional ``tensorboard``
package (``pip install -e ".[tensorboard]"``); a write that fails is said
once and never stops a trial. The event files are written here, not by
tensorboard's ``EventFileWriter``, which imports TensorFlow for its file
access: about 6 s of the coordinator's start-up on 2 cores, inside the
sweep's timeout.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from sweeps.config import SweepConfig
from sweeps.parameters import Param
from workers.spec import EpochReport, TrialResult


def available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def run_name(number: int) -> str:
    return f"trial-{number:04d}"


def logdir(config: SweepConfig, key: str | None) -> str | None:
    """Where a study's logs go: ``tensorboard:`` in the YAML, else in its checkpoint store when that is a folder
    (``STORE/tensorboard/STUDY-UID``); None when off, or with no folder to put them in."""
    if config.tensorboard is False or not available():
        return None
    if isinstance(config.tensorboard, str):
        return os.path.join(config.tensorboard, key or config.study)
    store = config.checkpoint_store
    if store is None or key is None or "://" in store:
        return None
    return os.path.join(store, "tensorboard", key)


def for_study(config: SweepConfig, key: str | None, note: Callable[[str], None]) -> Board | NoBoard:
    folder = logdir(config, key)
    if folder is None:
        return NoBoard()
    board = Board(folder, config, note)
    return NoBoard() if board.broken else board


class NoBoard:
    """No logs: every call does nothing."""

    logdir: str | None = None

    def start(self, number: int, params: dict[str, Any], earlier: dict[int, float]) -> None:
        pass

    def epoch(self, report: EpochReport) -> None:
        pass

    def end(self, result: TrialResult) -> None:
        pass

    def close(self) -> None:
        pass


class Board(NoBoard):
    """One event file per running trial; closed when the trial is told. The first failure stops all logs."""

    def __init__(self, logdir: str, config: SweepConfig, note: Callable[[str], None]) -> None:
        self.logdir, self.note, self.broken = logdir, note, False
        self.objectives = [name for name, _ in config.all_objectives]     # the metric first
        self.open: dict[int, Any] = {}
        root = self._open(logdir)
        if root is not None:
            self._write(root, 0, _config_summary(config.parameters, config.all_objectives))
            self._close(root)

    def _open(self, folder: str) -> Any:
        return self._safely(lambda: EventFile(folder))

    def _write(self, writer: Any, step: int, summary: Any) -> None:
        from tensorboard.compat.proto import event_pb2

        def write() -> None:
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
            writer.flush()

        self._safely(write)

    @staticmethod
    def _close(writer: Any) -> None:
        try:
            writer.close()
        except Exception:        # what it held is written already, or logs have stopped and said so
            pass

    def _safely(self, action: Callable[[], Any]) -> Any:
        """``action()``, unless logs have stopped; a failure (a full disk, a folder gone) stops them, said once."""
        if self.broken:
            return None
        try:
            return action()
        except Exception as e:
            self.broken = True
            self.note(f"TensorBoard logs in {self.logdir} stopped: {type(e).__name__}: {e}")
            return None

    def start(self, number: int, params: dict[str, Any], earlier: dict[int, float]) -> None:
        """A trial starts: its hyperparameters, and the epochs a retry's checkpoint already holds."""
        from tensorboard.plugins.hparams import summary_v2

        assert self.logdir is not None
        writer = self._open(os.path.join(self.logdir, run_name(number)))
        if writer is None:
            return
        self.open[number] = writer
        plain = {k: v for k, v in params.items() if isinstance(v, (bool, int, float, str))}
        self._write(writer, 0, summary_v2.hparams_pb(plain, trial_id=run_name(number)))
        for epoch, value in sorted(earlier.items()):
            self._write(writer, epoch, _scalars({self.objectives[0]: value}))

    def epoch(self, report: EpochReport) -> None:
        if report.number in self.open:
            values = {**{k: v for k, v in report.logs.items() if isinstance(v, (int, float))},
                      self.objectives[0]: report.value}
            self._write(self.open[report.number], report.epoch, _scalars(values))

    def end(self, result: TrialResult) -> None:
        """The trial's objectives as measured (what the HParams table compares), then its file is closed."""
        writer = self.open.pop(result.number, None)
        if writer is None:
            return
        found = {name: result.metrics.get(name) for name in self.objectives[1:]}
        found[self.objectives[0]] = result.value
        self._write(writer, result.epochs_run, _scalars({f"objective/{k}": v for k, v in found.items()
                                                         if isinstance(v, (int, float))}))
        self._close(writer)

    def close(self) -> None:
        for writer in self.open.values():
            self._close(writer)
        self.open.clear()


class EventFile:
    """One TensorBoard event file in a local folder, named and framed as tensorboard's own writer does."""

    _uids = itertools.count()

    def __init__(self, folder: str) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        os.makedirs(folder, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(self._uids)}"
        self.records = RecordWriter(open(os.path.join(folder, name), "wb"))  # noqa: SIM115 (closed by close())
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: Any) -> None:
        self.records.write(event.SerializeToString())

    def flush(self) -> None:
        self.records.flush()

    def close(self) -> None:
        self.records.close()


def _scalars(values: dict[str, float]) -> Any:
    from tensorboard.compat.proto import summary_pb2

    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                      for k, v in values.items()])


def _config_summary(params: dict[str, Param], objectives: list[tuple[str, str]]) -> Any:
    """The experiment: each searched parameter with its domain, and the metrics the HParams tab shows."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    hparams = []
    for p in params.values():
        if p.values is not None and all(isinstance(v, (int, float, str, bool)) for v in p.values):
            kinds = {type(v) for v in p.values}
            hparams.append(hp.HParam(p.name, hp.Discrete(p.values) if len(kinds) == 1 else None))
        elif p.low is not None and p.high is not None:
            domain = hp.IntInterval(int(p.low), int(p.high)) if p.is_int else hp.RealInterval(float(p.low),
                                                                                               float(p.high))
            hparams.append(hp.HParam(p.name, domain))
        else:
            hparams.append(hp.HParam(p.name))
    metrics = [hp.Metric(f"objective/{name}", display_name=name) for name, _ in objectives]
    metrics += [hp.Metric(objectives[0][0], display_name=f"{objectives[0][0]} per epoch")]
    return hp.hparams_config_pb(hparams=hparams, metrics=metrics)
