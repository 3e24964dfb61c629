"""Where trials run: the ``Dispatcher`` protocol the coordinator drives, and an in-process dispatcher.

The coordinator never names Ray: it launches trial specs, polls for
per-epoch reports and results, answers each report with a decision, and
can stop everything in flight. ``RayDispatcher`` (``sweeps/raydispatch.py``)
runs trials on Ray actors; ``InlineDispatcher`` runs them as threads of the
coordinator's own process, for tests of the coordinator's rules that take a
fraction of a second. Both are held to one contract test
(``tests/test_dispatch.py``).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Protocol

from workers import attempt
from workers.spec import Decision, EpochReport, Failure, TrialResult, TrialSpec


class Dispatcher(Protocol):
    """Runs trial specs and relays what their workers say.

    The rules: every launched trial ends in exactly one ``TrialResult``,
    returned by ``poll`` or by ``stop_all``, never both; a trial's reports
    come out of ``poll`` before its result does; a worker that sent a
    report waits until ``decide`` answers it. Methods are called from one
    thread (the coordinator's).
    """

    def start(self, slots: int, data: Any) -> None:
        """Make ``slots`` trial slots ready; ``data`` is what every trial trains on (arrays or a folder ref)."""

    def idle(self) -> int:
        """Slots free for a launch."""

    def launch(self, spec: TrialSpec) -> None:
        """Start a trial in a free slot."""

    def poll(self, timeout: float) -> tuple[list[EpochReport], list[TrialResult]]:
        """Reports and results that arrived, waiting up to ``timeout`` seconds for the first."""

    def decide(self, number: int, epoch: int, decision: Decision) -> None:
        """Answer trial ``number``'s report of ``epoch``."""

    def stop(self, number: int, reason: str, failure: Failure) -> TrialResult | None:
        """Stop one trial and free its slot for another (a fresh process, where there is one); its failed result,
        which ``poll`` will not return (None when it is not in flight)."""

    def stop_all(self, reason: str, failure: Failure) -> list[TrialResult]:
        """Stop every trial in flight (at once, or at its next report where nothing can be killed); their failed
        results, which ``poll`` will not return, nor any later report of theirs. Then only ``close`` follows."""

    def close(self) -> None:
        """Free what ``start`` took."""


class _Reporter:
    """A trial thread's channel: puts its report on the queue, then waits for the coordinator's answer."""

    def __init__(self, owner: InlineDispatcher, number: int) -> None:
        self.owner, self.number = owner, number

    def report(self, report: EpochReport) -> Decision:
        answer: queue.Queue[Decision] = queue.Queue(maxsize=1)
        with self.owner.lock:
            if self.number in self.owner.stopped:
                raise _Stopped()
            self.owner.answers[(report.number, report.epoch)] = answer
        self.owner.events.put(report)
        decision = answer.get()
        if self.number in self.owner.stopped:
            raise _Stopped()
        return decision


class _Stopped(Exception):
    """Raised in a stopped trial's thread at its next report: the thread ends there, its result is dropped."""


class InlineDispatcher:
    """Trials as threads of this process (no Ray, no subprocess): for fast tests of the coordinator.

    ``train`` has the trainer's signature, ``(spec, arrays, reporter) -> TrialResult``;
    exceptions become failed results as on a Ray worker (``workers/attempt.py``).
    """

    def __init__(self, train: attempt.Train) -> None:
        self.train = train
        self.slots = 0
        self.data: Any = None
        self.lock = threading.Lock()
        self.events: queue.Queue[EpochReport | TrialResult] = queue.Queue()
        self.answers: dict[tuple[int, int], queue.Queue[Decision]] = {}
        self.running: set[int] = set()
        self.stopped: set[int] = set()
        self.threads: dict[int, threading.Thread] = {}
        self.launched: list[TrialSpec] = []       # every spec, in launch order (tests read it)

    def start(self, slots: int, data: Any) -> None:
        self.slots, self.data = slots, data

    def idle(self) -> int:
        """Free slots: a stopped trial's thread holds its slot until it has ended."""
        busy = len(self.running) + sum(t.is_alive() for n, t in self.threads.items() if n in self.stopped)
        return max(0, self.slots - busy)

    def launch(self, spec: TrialSpec) -> None:
        assert self.idle() > 0, "launch needs an idle slot"
        self.running.add(spec.number)
        self.launched.append(spec)
        self.threads[spec.number] = thread = threading.Thread(target=self._run, args=(spec,), name=f"trial-{spec.number}",
                                                              daemon=True)
        thread.start()

    def _run(self, spec: TrialSpec) -> None:
        result = attempt.failed(spec.number, "the trial's thread ended without a result", Failure.ERROR)
        try:
            result, _ = attempt.run(self.train, spec, self.data, _Reporter(self, spec.number))
        except BaseException as e:          # _Stopped, or worse: the slot must still answer
            result = attempt.error(spec.number, e)
        finally:
            with self.lock:
                if spec.number not in self.stopped:
                    self.events.put(result)

    def poll(self, timeout: float) -> tuple[list[EpochReport], list[TrialResult]]:
        reports: list[EpochReport] = []
        results: list[TrialResult] = []
        try:
            item = self.events.get(timeout=timeout)
            while True:
                if item.number in self.stopped:     # said before stop_all answered for it
                    pass
                elif isinstance(item, EpochReport):
                    reports.append(item)
                else:
                    self.running.discard(item.number)
                    results.append(item)
                item = self.events.get_nowait()
        except queue.Empty:
            pass
        return reports, results

    def decide(self, number: int, epoch: int, decision: Decision) -> None:
        with self.lock:
            answer = self.answers.pop((number, epoch), None)
        if answer is not None:
            answer.put(decision)

    def stop(self, number: int, reason: str, failure: Failure) -> TrialResult | None:
        """A thread cannot be killed: it is left to end at its next report, and holds its slot until then."""
        with self.lock:
            if number not in self.running:
                return None
            self.stopped.add(number)
            self.running.discard(number)
            waiting = [self.answers.pop(key) for key in [k for k in self.answers if k[0] == number]]
        for answer in waiting:
            answer.put(Decision.PRUNE)
        return attempt.failed(number, reason, failure)

    def stop_all(self, reason: str, failure: Failure) -> list[TrialResult]:
        with self.lock:
            stopped = sorted(self.running)
            self.stopped.update(stopped)
            waiting, self.answers = list(self.answers.values()), {}
        for answer in waiting:        # a thread waiting for an answer wakes up and ends
            answer.put(Decision.PRUNE)
        self.running.clear()
        return [attempt.failed(number, reason, failure) for number in stopped]

    def close(self) -> None:
        """Stop what runs, and wait a little for the threads to reach their next report and end."""
        self.stop_all("dispatcher closed", Failure.INTERRUPTED)
        for thread in self.threads.values():
            thread.join(timeout=5)
