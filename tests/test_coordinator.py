"""The coordinator's rules, fast: the in-process dispatcher, a scripted trainer, a real Optuna study on SQLite.

No Ray and no TensorFlow here: each test runs a whole sweep (launch, relay,
prune, retry, interrupt, resume) in well under a second. The same rules on
real Ray, real PostgreSQL and real Keras are covered end to end in
``test_sweep.py`` and ``test_recovery.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweeps import study as schema
from sweeps.config import SweepConfig, from_dict
from sweeps.dispatch import InlineDispatcher
from sweeps.errors import SweepFailed, SweepsError
from sweeps.runner import resume_sweep, run_sweep
from sweeps.storage import open_storage
from tests.helpers import TINY_SPACE, cli_here
from tests.scripted import Scripted
from workers import attempt
from workers.spec import Decision, Failure, TrialResult, TrialSpec, TrialState

TS = optuna.trial.TrialState


def _config(tmp_path: Path, **changes: Any) -> SweepConfig:
    raw = {**TINY_SPACE, "epochs": 4, "pruner": {"name": "none"},
           "parameters": {"learning_rate": {"values": [1e-6, 1e-4, 1e-2, 1e-1]}, "batch_size": 64,
                          "optimizer": {"values": ["adam", "sgd"]},
                          "momentum": {"low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}}},
           "checkpoints": {"store": str(tmp_path / "store")}, **changes}
    return from_dict(raw, source="test")


@pytest.fixture(scope="module")
def empty_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file with Optuna's tables and no study: each test starts from a copy (creating the tables
    takes longer than a whole sweep here). The dataset is loaded once too (scikit-learn's import)."""
    from workers import data

    data.load({"name": "digits"})
    path = tmp_path_factory.mktemp("template") / "s.db"
    open_storage(f"sqlite:///{path}", create=True)
    return path


@pytest.fixture()
def folder(empty_storage: Path, tmp_path: Path) -> Iterator[Path]:
    """The test's folder, holding a copy of the empty storage: in memory (tmpfs) where the machine has one,
    since SQLite's commits to disk are most of a sweep's time here."""
    where = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else tmp_path
    shutil.copy(empty_storage, where / "s.db")
    yield where
    if where != tmp_path:
        shutil.rmtree(where, ignore_errors=True)


def _run(folder: Path, script: Scripted, **changes: Any) -> tuple[dict[str, Any], InlineDispatcher]:
    dispatcher = InlineDispatcher(script)
    summary = run_sweep(_config(folder, **changes), f"sqlite:///{folder}/s.db", dispatcher=dispatcher)
    return summary, dispatcher


def _trials(folder: Path, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/s.db").get_trials()


def _configurations(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Finished configurations by state: a failure that has a retry does not count, its retry does."""
    replaced = {t.user_attrs[schema.RETRY_OF] for t in trials if schema.RETRY_OF in t.user_attrs}
    out = {s.name: 0 for s in TS}
    for t in trials:
        if not (t.state == TS.FAIL and t.number in replaced):
            out[t.state.name] += 1
    return out


def _curves_continuous(trials: list[optuna.trial.FrozenTrial]) -> None:
    for t in trials:
        if t.state in (TS.COMPLETE, TS.PRUNED):
            assert sorted(t.intermediate_values) == list(range(1, t.user_attrs[schema.EPOCHS_RUN] + 1)), t.number


def test_launch_keeps_parallel_trials_in_flight_and_stores_each_epoch_and_spec(folder: Path) -> None:
    script = Scripted(delay=0.01)
    summary, dispatcher = _run(folder, script, budget={"n_trials": 5}, parallel=2)
    trials = _trials(folder)
    assert summary["budget_met"] and summary["complete"] == 5 and len(trials) == 5
    assert all(t.state == TS.COMPLETE for t in trials)
    assert script.most_running == 2, "two trials should run at once"
    _curves_continuous(trials)
    specs = {s.number: s for s in dispatcher.launched}
    for t in trials:
        spec = specs[t.number]
        assert spec.params["learning_rate"] == t.params["learning_rate"] and spec.params["batch_size"] == 64
        assert spec.params["augment"] == 0.0                          # a default filled in by the spec builder
        assert spec.seed == t.user_attrs[schema.SEED] == schema.trial_seed(0, t.number)
        assert t.user_attrs[schema.FIXED_PARAMS] == {"batch_size": 64}
        assert t.user_attrs[schema.COORDINATOR].endswith(f":{os.getpid()}")
        assert ("momentum" in t.params) == (t.params["optimizer"] == "sgd")     # conditions hold
    assert summary["best_value"] == max(t.value for t in trials)


def test_prune_decisions_reach_the_worker_and_stop_it(folder: Path) -> None:
    script = Scripted()
    _run(folder, script, budget={"n_trials": 8}, parallel=1, sampler={"name": "random", "seed": 1},
         pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
         parameters={"learning_rate": {"values": [1e-6, 1e-2]}, "optimizer": {"values": ["adam", "sgd"]},
                     "momentum": {"low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}}})
    trials = _trials(folder)
    pruned = [t for t in trials if t.state == TS.PRUNED]
    assert pruned, "the bad learning rates should be pruned"
    first_complete = min(t.number for t in trials if t.state == TS.COMPLETE)
    for t in trials:
        bad = t.params["learning_rate"] == 1e-6 and t.number > first_complete
        assert (t.state == TS.PRUNED) == bad, (t.number, t.params, t.state)
    for t in pruned:
        assert t.user_attrs[schema.EPOCHS_RUN] < 4 and t.user_attrs[schema.REASON].startswith("pruned after epoch")
        assert script.decisions[t.number][-1] == Decision.PRUNE          # the worker got the answer and stopped
        assert len(script.decisions[t.number]) == t.user_attrs[schema.EPOCHS_RUN]
    _curves_continuous(trials)


def test_a_failed_trial_is_retried_from_its_checkpoint_with_the_same_seed(folder: Path) -> None:
    def fail_once(spec: TrialSpec, epoch: int) -> None:
        if spec.number == 0 and epoch == 3:
            raise RuntimeError("out of luck")

    script = Scripted(on_epoch=fail_once)
    summary, dispatcher = _run(folder, script, budget={"n_trials": 2}, parallel=1)
    trials = _trials(folder)
    failed = trials[0]
    assert failed.state == TS.FAIL and failed.user_attrs[schema.REASON].startswith("RuntimeError: out of luck (")
    assert failed.user_attrs[schema.FAILURE] == Failure.ERROR.value
    [retry] = [t for t in trials if t.user_attrs.get(schema.RETRY_OF) == 0]
    assert retry.state == TS.COMPLETE and retry.params == failed.params
    assert retry.user_attrs[schema.SEED] == failed.user_attrs[schema.SEED]
    assert retry.user_attrs[schema.FAULTS] == 1 and retry.user_attrs[schema.START_EPOCH] == 2
    assert script.first_epoch[retry.number] == 3, "the retry trains on from its checkpoint's epoch"
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]      # epochs 1-2 carried over from the checkpoint
    assert summary["complete"] == 2 and summary["retried"] == 1 and summary["failed"] == 0


def test_a_lost_worker_is_retried_until_max_retries_then_counts_once(folder: Path) -> None:
    def lost(spec: TrialSpec, epoch: int) -> TrialResult | None:
        if spec.params["learning_rate"] == 1e-1 and epoch == 2:
            return attempt.failed(spec.number, "worker lost: killed", Failure.WORKER_LOST, epoch - 1)
        return None

    _run(folder, Scripted(on_epoch=lost), budget={"n_trials": 4}, parallel=2, sampler={"name": "grid"},
         parameters={"learning_rate": {"values": [1e-4, 1e-3, 1e-2, 1e-1]}}, recovery={"max_retries": 2})
    trials = _trials(folder)
    doomed = [t for t in trials if t.params["learning_rate"] == 1e-1]
    assert [t.user_attrs.get(schema.ATTEMPT, 1) for t in doomed] == [1, 2, 3]        # max_retries 2: three attempts
    assert all(t.state == TS.FAIL and t.user_attrs[schema.FAILURE] == "worker_lost" for t in doomed)
    assert _configurations(trials) == {**{s.name: 0 for s in TS}, "COMPLETE": 3, "FAIL": 1}


def test_first_ctrl_c_lets_running_trials_finish_and_resume_meets_the_budget(folder: Path) -> None:
    def ctrl_c(spec: TrialSpec, epoch: int) -> None:
        if spec.number == 0 and epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)

    summary, _ = _run(folder, Scripted(on_epoch=ctrl_c, delay=0.01), budget={"n_trials": 5}, parallel=2)
    assert summary["interrupted"] and not summary["budget_met"]
    trials = _trials(folder)
    assert len(trials) == 2 and all(t.state == TS.COMPLETE for t in trials), "running trials finish, none start"
    again = resume_sweep("tiny", f"sqlite:///{folder}/s.db", dispatcher=InlineDispatcher(Scripted()))
    assert again["budget_met"] and "interrupted" not in again
    assert _configurations(_trials(folder))["COMPLETE"] == 5 and len(_trials(folder)) == 5


def test_second_ctrl_c_records_interrupted_and_resume_continues_from_checkpoints(folder: Path) -> None:
    def ctrl_c_twice(spec: TrialSpec, epoch: int) -> None:
        if spec.number == 0 and epoch == 3:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)                      # two signals at once would reach Python's handler once
            os.kill(os.getpid(), signal.SIGINT)

    summary, _ = _run(folder, Scripted(on_epoch=ctrl_c_twice), budget={"n_trials": 2}, parallel=1)
    assert summary["interrupted"]
    [stopped, queued] = _trials(folder)
    assert stopped.state == TS.FAIL and stopped.user_attrs[schema.REASON] == "interrupted (Ctrl-C)"
    assert stopped.user_attrs[schema.FAILURE] == Failure.INTERRUPTED.value
    assert queued.state == TS.WAITING and queued.user_attrs[schema.RETRY_OF] == 0
    script = Scripted()
    resume_sweep("tiny", f"sqlite:///{folder}/s.db", dispatcher=InlineDispatcher(script))
    trials = _trials(folder)
    retry = trials[1]
    start = retry.user_attrs[schema.START_EPOCH]         # the last checkpoint stored before the stop
    assert retry.state == TS.COMPLETE and start >= 2 and script.first_epoch[1] == start + 1
    assert retry.user_attrs[schema.FAULTS] == 0          # Ctrl-C is not the configuration's fault
    assert _configurations(trials)["COMPLETE"] == 2
    _curves_continuous(trials)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_now_like_a_second_ctrl_c(folder: Path, signum: int) -> None:
    name = signal.Signals(signum).name

    def terminate(spec: TrialSpec, epoch: int) -> None:
        if spec.number == 1 and epoch == 2:
            os.kill(os.getpid(), signum)

    summary, _ = _run(folder, Scripted(on_epoch=terminate, delay=0.02), budget={"n_trials": 6}, parallel=2)
    assert summary["interrupted"] and summary["signal"] == name
    trials = _trials(folder)
    stopped = [t for t in trials if t.state == TS.FAIL]
    assert stopped and all(t.user_attrs[schema.REASON] == f"interrupted ({name})" for t in stopped)
    assert all(t.user_attrs[schema.FAILURE] == Failure.INTERRUPTED.value for t in stopped)
    queued = [t for t in trials if t.state == TS.WAITING]
    assert sorted(t.user_attrs[schema.RETRY_OF] for t in queued) == sorted(t.number for t in stopped)
    assert not [t for t in trials if t.state == TS.RUNNING]
    assert signal.getsignal(signum) is not None and "Coordinator" not in repr(signal.getsignal(signum))


def test_the_budget_counts_configurations_exactly(folder: Path) -> None:
    """Complete, pruned, diverged, failed for good and retried: exactly n_trials configurations finish."""
    def faults(spec: TrialSpec, epoch: int) -> TrialResult | None:
        lr = spec.params["learning_rate"]
        if lr == 1e-1 and epoch == 2:          # fails every attempt
            raise ValueError("bad configuration")
        if lr == 1e-6 and epoch == 1:          # diverged: pruned, never retried
            return TrialResult(spec.number, TrialState.PRUNED, None, 1, "diverged: loss became nan in epoch 1")
        return None

    summary, _ = _run(folder, Scripted(on_epoch=faults), budget={"n_trials": 7, "max_failed_trials": 7}, parallel=2,
                      sampler={"name": "random", "seed": 4}, recovery={"max_retries": 1})
    trials = _trials(folder)
    counts = _configurations(trials)
    assert counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"] == 7 and counts["RUNNING"] == counts["WAITING"] == 0
    assert summary["complete"] + summary["pruned"] + summary["failed"] == 7
    diverged = [t for t in trials if t.params["learning_rate"] == 1e-6]
    assert diverged and all(t.state == TS.PRUNED and t.user_attrs[schema.REASON].startswith("diverged")
                            for t in diverged)
    assert not [t for t in trials if t.user_attrs.get(schema.RETRY_OF) in {d.number for d in diverged}]


def test_two_coordinators_share_one_budget_exactly(pg_url: str, folder: Path) -> None:
    """A second coordinator resumes the study while the first runs: together they launch each trial once."""
    name = f"shared-{os.getpid()}-{folder.name}"[:60]
    config = _config(folder, study=name, budget={"n_trials": 6}, parallel=1, sampler={"name": "tpe", "seed": 2})
    study_exists, second_trains = threading.Event(), threading.Event()

    def hold_first_trial(spec: TrialSpec, epoch: int) -> None:
        study_exists.set()
        if spec.number == 0:                  # keep trial 0 running until the second coordinator has a trial
            second_trains.wait(30)

    first = InlineDispatcher(Scripted(on_epoch=hold_first_trial, delay=0.01))
    second = InlineDispatcher(Scripted(on_epoch=lambda spec, epoch: second_trains.set(), delay=0.01))
    errors: list[BaseException] = []

    def resume() -> None:
        try:
            study_exists.wait(30)
            resume_sweep(name, pg_url, dispatcher=second)
        except BaseException as e:          # reported by the main thread
            errors.append(e)

    other = threading.Thread(target=resume)
    other.start()
    run_sweep(config, pg_url, dispatcher=first)
    other.join(60)
    assert not errors, errors
    trials = optuna.load_study(study_name=name, storage=open_storage(pg_url)).get_trials()
    assert len(trials) == 6 and all(t.state == TS.COMPLETE for t in trials)
    launched = [s.number for s in first.launched] + [s.number for s in second.launched]
    assert sorted(launched) == list(range(6)), "each trial launched once, by one of the two"
    assert first.launched and second.launched, "both coordinators should have run trials"


def test_an_unreadable_dataset_stops_the_sweep_and_leaves_retries_queued(folder: Path) -> None:
    def unreadable(spec: TrialSpec, epoch: int) -> TrialResult | None:
        if spec.number == 1:
            return attempt.failed(1, "dataset not readable on this worker: no folder /data", Failure.DATASET)
        return None

    with pytest.raises(SweepsError, match=r"trial 1: dataset not readable .*`sweeps resume` continues"):
        _run(folder, Scripted(on_epoch=unreadable, delay=0.05), budget={"n_trials": 4}, parallel=2)
    trials = _trials(folder)
    assert not [t for t in trials if t.state == TS.RUNNING]
    failed = [t for t in trials if t.state == TS.FAIL]
    assert {t.number for t in failed} == {0, 1}
    assert {t.user_attrs[schema.RETRY_OF] for t in trials if t.state == TS.WAITING} == {0, 1}
    assert all(t.user_attrs[schema.FAULTS] == 0 for t in trials if t.state == TS.WAITING)   # not the trials' fault


def _always_fails(spec: TrialSpec, epoch: int) -> None:
    if spec.params["learning_rate"] != 1e-2 and epoch == 2:
        raise ValueError(f"x_val has another shape (trial {spec.number})")


def test_failures_that_repeat_stop_the_sweep_with_the_last_reason(folder: Path, capsys: pytest.CaptureFixture) -> None:
    """budget.max_failed_trials (default: a quarter of n_trials, at least 3) stops a sweep that burns its
    budget on failures; resume with a higher limit continues it; the CLI exits 1 with the last reason."""
    with pytest.raises(SweepFailed) as failed:
        _run(folder, Scripted(on_epoch=_always_fails), budget={"n_trials": 12}, parallel=1,
             recovery={"max_retries": 1}, parameters={"learning_rate": {"values": [1e-4, 1e-3]}})
    message = str(failed.value)
    assert failed.value.exit_code == 1 and "\n" not in message
    assert "stopped: 3 trials failed for good (budget.max_failed_trials: 3)" in message
    assert "the last failure: ValueError: x_val has another shape" in message
    assert "sweeps resume tiny --max-failed-trials 6" in message
    trials = _trials(folder)
    assert _configurations(trials)["FAIL"] == 3 and len(trials) == 6          # 3 configurations, 2 attempts each
    assert not [t for t in trials if t.state in (TS.RUNNING, TS.WAITING)]

    url = f"sqlite:///{folder}/s.db"
    code, _, err = cli_here(capsys, "resume", "tiny", "--storage", url, "--quiet")   # nothing runs: limit spent
    assert code == 1 and err.startswith("error: sweep tiny stopped: 3 trials failed for good") and "\n" not in err.strip()
    with pytest.raises(SweepFailed, match="stopped: 5 trials failed for good"):
        resume_sweep("tiny", url, max_failed_trials=5, dispatcher=InlineDispatcher(Scripted(on_epoch=_always_fails)))
    assert _configurations(_trials(folder))["FAIL"] == 5


def test_a_sweep_whose_trials_all_failed_never_ends_well(folder: Path) -> None:
    with pytest.raises(SweepFailed, match=r"sweep tiny every trial failed \(2\); the last failure: ValueError: x_val"):
        _run(folder, Scripted(on_epoch=_always_fails), budget={"n_trials": 2, "max_failed_trials": 10}, parallel=1,
             recovery={"max_retries": 0}, parameters={"learning_rate": {"values": [1e-4, 1e-3]}})


def test_a_running_trial_that_never_beat_is_recovered_after_the_grace_period(folder: Path) -> None:
    """A trial asked outside a coordinator (or by one that died between ask and its first beat) has no heartbeat
    row; after the grace period it counts as lost like any other, and resume ends instead of waiting forever."""
    _run(folder, Scripted(), budget={"n_trials": 2}, parallel=1, recovery={"heartbeat_interval": 0.5, "grace_period": 1.5})
    url = f"sqlite:///{folder}/s.db"
    orphan = optuna.load_study(study_name="tiny", storage=url).ask()          # plain Optuna: RUNNING, never beats
    said: list[str] = []
    summary = resume_sweep("tiny", url, dispatcher=InlineDispatcher(Scripted()), on_progress=lambda p: said.append(p.last))
    trials = _trials(folder)
    lost = trials[orphan.number]
    assert lost.state == TS.FAIL and lost.user_attrs[schema.REASON].startswith("coordinator lost")
    assert lost.user_attrs[schema.FAILURE] == Failure.COORDINATOR_LOST.value
    [retry] = [t for t in trials if t.user_attrs.get(schema.RETRY_OF) == orphan.number]
    assert retry.state == TS.COMPLETE and summary["budget_met"]
    assert not [t for t in trials if t.state in (TS.RUNNING, TS.WAITING)]
    assert any(f"trial(s) {orphan.number} lost their coordinator" in line for line in said)


def test_a_damaged_checkpoint_is_passed_over_for_the_other_slot_and_the_retry_says_so(folder: Path) -> None:
    def damage_then_fail(spec: TrialSpec, epoch: int) -> None:
        if spec.number == 0 and epoch == 4:
            time.sleep(0.2)                          # epoch 3's checkpoint is written after its answer
            [slot] = (folder / "store").glob("tiny-*/config-0.1.ckpt")       # epoch 3: odd slot
            blob = bytearray(slot.read_bytes())
            blob[-100] ^= 0xFF
            slot.write_bytes(bytes(blob))
            raise RuntimeError("worker crashed")

    _run(folder, Scripted(on_epoch=damage_then_fail), budget={"n_trials": 1}, parallel=1, epochs=5)
    [failed, retry] = _trials(folder)
    assert failed.state == TS.FAIL and retry.state == TS.COMPLETE
    assert retry.user_attrs[schema.START_EPOCH] == 2, "epoch 3's slot is damaged: the retry starts after epoch 2"
    assert retry.user_attrs[schema.REASON].startswith("a checkpoint of configuration 0 was unusable (slot 1: its "
                                                      "checksum does not match")
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4, 5]
    assert retry.user_attrs[schema.CHECKPOINT_NOTE] == retry.user_attrs[schema.REASON]


def test_a_full_disk_loses_checkpoints_not_trials_and_status_warns(tiny_disk: Path, folder: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    said: list[str] = []
    summary = run_sweep(_config(folder, budget={"n_trials": 2}, parallel=1, checkpoints={"store": str(tiny_disk)}),
                        f"sqlite:///{folder}/s.db", dispatcher=InlineDispatcher(Scripted(weights=30_000)),
                        on_progress=lambda p: said.append(p.last))
    assert summary["complete"] == 2, "the trials go on without their checkpoints"
    assert any("not saved: [Errno 28] No space left on device" in line for line in said)
    code, out, _ = cli_here(capsys, "status", "tiny", "--storage", f"sqlite:///{folder}/s.db")
    assert code == 0 and "WARNING: 8 checkpoint write(s) to" in out and "No space left on device" in out


def test_resume_can_point_a_study_at_another_checkpoint_store(folder: Path) -> None:
    def ctrl_c_twice(spec: TrialSpec, epoch: int) -> None:
        if spec.number == 0 and epoch == 3:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGINT)

    _run(folder, Scripted(on_epoch=ctrl_c_twice), budget={"n_trials": 1}, parallel=1)
    url = f"sqlite:///{folder}/s.db"
    before = optuna.load_study(study_name="tiny", storage=url).user_attrs[schema.CONFIG_ATTR]
    with pytest.raises(SweepsError, match="cannot create it .* --checkpoint-store"):
        resume_sweep("tiny", url, checkpoint_store="/proc/no-such-store", dispatcher=InlineDispatcher(Scripted()))
    assert optuna.load_study(study_name="tiny", storage=url).user_attrs[schema.CONFIG_ATTR] == before

    said: list[str] = []
    elsewhere = folder / "elsewhere"
    resume_sweep("tiny", url, checkpoint_store=str(elsewhere), dispatcher=InlineDispatcher(Scripted()),
                 on_progress=lambda p: said.append(p.last))
    config = optuna.load_study(study_name="tiny", storage=url).user_attrs[schema.CONFIG_ATTR]
    assert config["checkpoints"]["store"] == str(elsewhere)
    retry = _trials(folder)[1]
    assert retry.state == TS.COMPLETE and schema.START_EPOCH not in retry.user_attrs   # epoch 0: nothing there
    assert sum("retries without one start at epoch 0" in line for line in set(said)) == 1
    assert list(elsewhere.glob("tiny-*/config-0.*.ckpt")), "the new store holds the checkpoints from now on"


def test_a_database_server_without_a_checkpoint_store_says_where_checkpoints_go(pg_url: str, folder: Path) -> None:
    said: list[str] = []
    name = f"where-{os.getpid()}-{folder.name}"[:60]
    raw = _config(folder, study=name, budget={"n_trials": 1}).to_dict()
    raw["checkpoints"]["store"] = None
    run_sweep(from_dict(raw, source="test"), pg_url, dispatcher=InlineDispatcher(Scripted()),
              on_progress=lambda p: said.append(p.last))
    [line] = [s for s in set(said) if s.startswith("checkpoints go to")]
    assert "on this machine; to resume on another" in line and "s3://" in line and "--checkpoint-store" in line


def test_every_unreadable_result_of_one_poll_is_recorded(folder: Path) -> None:
    """Every slot fails on a missing folder at the same moment: both results arrive in one poll, both are told."""
    together = threading.Barrier(2, timeout=10)

    def unreadable(spec: TrialSpec, epoch: int) -> TrialResult:
        together.wait()
        return attempt.failed(spec.number, "dataset not readable on this worker: no folder /data", Failure.DATASET)

    def hold_the_loop(progress: Any) -> None:
        if progress.last == "trial 1 started":       # both threads post their results before the next poll
            time.sleep(0.5)

    with pytest.raises(SweepsError, match="dataset not readable"):
        run_sweep(_config(folder, budget={"n_trials": 4}, parallel=2), f"sqlite:///{folder}/s.db",
                  dispatcher=InlineDispatcher(Scripted(on_epoch=unreadable)), on_progress=hold_the_loop)
    trials = _trials(folder)
    assert not [t for t in trials if t.state == TS.RUNNING], [(t.number, t.state) for t in trials]
    assert {t.number for t in trials if t.state == TS.FAIL} == {0, 1}
    assert {t.user_attrs[schema.RETRY_OF] for t in trials if t.state == TS.WAITING} == {0, 1}


def test_a_trial_thread_that_dies_of_a_base_exception_still_answers(folder: Path) -> None:
    def exits(spec: TrialSpec, epoch: int) -> None:
        if spec.number == 0 and epoch == 2:
            raise SystemExit(3)

    summary, _ = _run(folder, Scripted(on_epoch=exits), budget={"n_trials": 2}, parallel=1)
    failed = _trials(folder)[0]
    assert failed.state == TS.FAIL and failed.user_attrs[schema.REASON].startswith("SystemExit: 3")
    assert summary["complete"] == 2 and summary["retried"] == 1


def test_a_hung_trial_is_stopped_as_stalled_and_retried_from_its_checkpoint(folder: Path) -> None:
    """Heartbeats prove the coordinator lives, not that a trial moves: one silent past recovery.stall_timeout is
    failed as stalled, its slot given a fresh worker, and it is retried from its checkpoint."""
    def hang(spec: TrialSpec, epoch: int) -> None:
        if spec.number == 0 and epoch == 3:
            time.sleep(1.5)                       # hung (kill -STOP on a real trainer); this thread ends after

    summary, _ = _run(folder, Scripted(on_epoch=hang, delay=0.02), budget={"n_trials": 3}, parallel=2,
                      recovery={"stall_timeout": 0.5})
    trials = _trials(folder)
    stalled = trials[0]
    assert stalled.state == TS.FAIL and stalled.user_attrs[schema.REASON] == "stalled: no report for 0.5s"
    assert stalled.user_attrs[schema.FAILURE] == Failure.STALLED.value
    [retry] = [t for t in trials if t.user_attrs.get(schema.RETRY_OF) == 0]
    assert retry.state == TS.COMPLETE and retry.user_attrs[schema.START_EPOCH] == 2 and retry.user_attrs[schema.FAULTS] == 1
    assert summary["complete"] == 3 and summary["budget_met"]


def test_the_stall_limit_follows_the_epochs_seen() -> None:
    from sweeps.recovery import StallWatch

    watch = StallWatch(None)
    assert watch.limit() == 1800.0                     # nothing seen yet
    watch.started(1, 0.0)
    for t in (50.0, 60.0, 70.0, 81.0):                 # the first report (import, tracing) is not an epoch time
        watch.reported(1, t)
    assert watch.limit() == 3 * 10.0 + 120.0            # three median epochs and two minutes
    assert watch.stalled(200.0) == [] and watch.stalled(232.0) == [1]
    watch.started(2, 100.0)                             # before its first report: five minutes more
    assert 2 not in watch.stalled(400.0) and 2 in watch.stalled(551.0)
    watch.forget(2)
    assert watch.stalled(1000.0) == [1] and StallWatch(7.5).limit() == 7.5
