"""One contract for every dispatcher: the in-process one and the Ray one must behave alike to the coordinator."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sweeps.config import from_dict
from sweeps.dispatch import Dispatcher, InlineDispatcher
from tests import scripted
from tests.helpers import TINY_SPACE, wait_for
from workers.spec import Decision, EpochReport, Failure, TrialResult, TrialSpec, TrialState


def _spec(number: int, script: str = "ok", epochs: int = 3) -> TrialSpec:
    return TrialSpec(number=number, params={"learning_rate": 1e-2, "script": script}, epochs=epochs, seed=number,
                     save_checkpoints=False)


@pytest.fixture(params=["inline", "ray"])
def dispatcher(request: pytest.FixtureRequest) -> Iterator[Dispatcher]:
    if request.param == "inline":
        d: Dispatcher = InlineDispatcher(scripted.Scripted(on_epoch=scripted.script_hook))
    else:
        import ray

        from sweeps.raydispatch import RayDispatcher

        ray.cloudpickle.register_pickle_by_value(scripted)     # Ray's workers need not import tests/
        config = from_dict({**TINY_SPACE, "parallel": 2}, source="test")
        d = RayDispatcher(config, request.getfixturevalue("ray_head"), worker=scripted.ScriptedWorker)
    d.start(2, None)
    try:
        yield d
    finally:
        d.close()


def _drive(d: Dispatcher, prune: dict[int, int], want: int, timeout: float = 60) -> list[EpochReport | TrialResult]:
    """Poll until ``want`` results; PRUNE trial n at epoch prune[n], CONTINUE otherwise. Everything, in order."""
    seen: list[EpochReport | TrialResult] = []

    def poll() -> bool:
        reports, results = d.poll(0.2)
        for r in reports:
            d.decide(r.number, r.epoch, Decision.PRUNE if prune.get(r.number) == r.epoch else Decision.CONTINUE)
        seen.extend([*reports, *results])
        return sum(isinstance(x, TrialResult) for x in seen) >= want

    wait_for(poll, f"{want} result(s)", timeout=timeout, interval=0, ignore=())
    return seen


def test_reports_then_one_result_per_trial_and_decisions_reach_the_worker(dispatcher: Dispatcher) -> None:
    assert dispatcher.idle() == 2
    dispatcher.launch(_spec(0))
    dispatcher.launch(_spec(1))
    assert dispatcher.idle() == 0
    seen = _drive(dispatcher, prune={1: 2}, want=2)
    results = {x.number: x for x in seen if isinstance(x, TrialResult)}
    assert results[0].state == TrialState.COMPLETE and results[0].epochs_run == 3
    assert results[1].state == TrialState.PRUNED and results[1].epochs_run == 2      # the PRUNE answer stopped it
    for n, epochs in ((0, 3), (1, 2)):
        mine = [x for x in seen if x.number == n]
        assert [x.epoch for x in mine[:-1]] == list(range(1, epochs + 1))       # every epoch, in order ...
        assert isinstance(mine[-1], TrialResult)                                 # ... then exactly one result
    assert dispatcher.idle() == 2


def test_an_exception_is_a_typed_failure_and_the_slot_stays_usable(dispatcher: Dispatcher) -> None:
    dispatcher.launch(_spec(0, "raise"))
    [result] = [x for x in _drive(dispatcher, {}, want=1) if isinstance(x, TrialResult)]
    assert result.state == TrialState.FAILED and result.failure == Failure.ERROR
    assert result.reason.startswith("ValueError: scripted failure (scripted.py:")
    dispatcher.launch(_spec(1))
    [again] = [x for x in _drive(dispatcher, {}, want=1) if isinstance(x, TrialResult)]
    assert again.state == TrialState.COMPLETE


def test_stop_all_answers_for_every_trial_in_flight_once(dispatcher: Dispatcher) -> None:
    dispatcher.launch(_spec(0, "slow", epochs=50))
    dispatcher.launch(_spec(1, "slow", epochs=50))
    _drive(dispatcher, {}, want=0)
    stopped = dispatcher.stop_all("interrupted (Ctrl-C)", Failure.INTERRUPTED)
    assert sorted(r.number for r in stopped) == [0, 1]
    assert all(r.state == TrialState.FAILED and r.failure == Failure.INTERRUPTED for r in stopped)
    time.sleep(0.5)
    reports, results = dispatcher.poll(0.2)
    assert results == [] and reports == [], "a stopped trial says nothing more"


def test_a_dead_ray_worker_is_a_lost_worker_and_its_slot_is_replaced(ray_head: str) -> None:
    import ray

    from sweeps.raydispatch import RayDispatcher

    ray.cloudpickle.register_pickle_by_value(scripted)
    d = RayDispatcher(from_dict({**TINY_SPACE, "parallel": 1}, source="test"), ray_head, worker=scripted.ScriptedWorker)
    d.start(1, None)
    try:
        d.launch(_spec(0, "exit"))
        [lost] = [x for x in _drive(d, {}, want=1) if isinstance(x, TrialResult)]
        assert lost.state == TrialState.FAILED and lost.failure == Failure.WORKER_LOST
        assert lost.reason.startswith("worker lost: ")
        assert d.idle() == 1
        d.launch(_spec(1))
        [again] = [x for x in _drive(d, {}, want=1) if isinstance(x, TrialResult)]
        assert again.state == TrialState.COMPLETE
    finally:
        d.close()


def test_stop_one_trial_leaves_the_others_running(dispatcher: Dispatcher) -> None:
    dispatcher.launch(_spec(0, "slow", epochs=50))
    dispatcher.launch(_spec(1, "slow", epochs=3))
    stopped = dispatcher.stop(0, "stalled: no report for 1.0s", Failure.STALLED)
    assert stopped is not None and stopped.state == TrialState.FAILED and stopped.failure == Failure.STALLED
    assert dispatcher.stop(7, "not running", Failure.STALLED) is None
    seen = _drive(dispatcher, {}, want=1)
    assert {x.number for x in seen} == {1}, "the stopped trial says nothing more"
    assert [x for x in seen if isinstance(x, TrialResult)][0].state == TrialState.COMPLETE
    wait_for(lambda: dispatcher.idle() == 2, "both slots free again", timeout=30)


def test_a_ray_client_init_failure_names_the_heads_reason_in_one_line() -> None:
    """Ray Client's init failures carry the head's whole traceback; the one line we print keeps its last line,
    which says why (seen in CI: the head's proxy timed out starting the driver's server process)."""
    from sweeps.raydispatch import reason

    failure = ConnectionAbortedError(
        "Initialization failure from server:\nTraceback (most recent call last):\n  File \"proxier.py\", line 777\n"
        "RuntimeError: Proxy failed to Connect to backend! Check `ray_client_server.err`\n")
    assert reason(failure) == ("Initialization failure from server: RuntimeError: Proxy failed to Connect to "
                               "backend! Check `ray_client_server.err`")
    assert reason(ConnectionError("ray client connection timeout\nmore")) == "ray client connection timeout"
