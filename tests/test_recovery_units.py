"""Budget accounting, retries and checkpoint slots, against a real Optuna storage and a real folder."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sweeps import recovery
from sweeps.checkpoints import CheckpointStore, default_location
from tests.helpers import free_port, wait_for
from workers import checkpoint

TS = optuna.trial.TrialState


def _full_tally(trials: list[optuna.trial.FrozenTrial]) -> recovery.Tally:
    """The obvious full pass over every trial: the reference the incremental Counter must agree with."""
    replaced = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    out = recovery.Tally()
    for t in trials:
        if t.state == TS.FAIL:
            out.retried += t.number in replaced
            out.failed += t.number not in replaced
        elif t.state in (TS.COMPLETE, TS.PRUNED, TS.RUNNING, TS.WAITING):
            name = {TS.COMPLETE: "complete", TS.PRUNED: "pruned", TS.RUNNING: "running", TS.WAITING: "waiting"}[t.state]
            setattr(out, name, getattr(out, name) + 1)
    return out


def _tally(trials: list[optuna.trial.FrozenTrial]) -> recovery.Tally:
    return recovery.Counter(maximize=True).update(trials)[0]


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(storage=f"sqlite:///{tmp_path}/t.db", study_name="u", direction="maximize")


def test_a_failure_with_a_retry_does_not_count_its_retry_does(tmp_path: Path) -> None:
    study = _study(tmp_path)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(optuna.trial.create_trial(params={"x": 0.1}, distributions=dist, value=0.5))
    study.add_trial(optuna.trial.create_trial(params={"x": 0.2}, distributions=dist, state=TS.PRUNED))
    study.add_trial(optuna.trial.create_trial(params={"x": 0.3}, distributions=dist, state=TS.FAIL))   # number 2
    failed = study.get_trials()[2]
    assert recovery.enqueue_retry(study, 2, failed.params, failed.user_attrs, fault=True, max_retries=2)
    t = _tally(study.get_trials())
    assert (t.complete, t.pruned, t.failed, t.waiting, t.retried) == (1, 1, 0, 1, 1)
    assert t.finished == 2

    retry = study.ask()                        # the queued retry is handed out first, same parameters
    assert retry.user_attrs == {"retry_of": 2, "config_id": 2, "attempt": 2, "faults": 1}
    assert retry.suggest_float("x", 0, 1) == 0.3
    study.tell(retry, state=TS.FAIL)
    attrs = study.get_trials()[retry.number].user_attrs
    assert recovery.retry_attrs(retry.number, attrs, fault=True, max_retries=2)["faults"] == 2
    assert recovery.retry_attrs(retry.number, attrs, fault=True, max_retries=1) is None   # used up
    assert recovery.retry_attrs(retry.number, attrs, fault=False, max_retries=1)["config_id"] == 2
    assert _tally(study.get_trials()).failed == 1       # no retry queued: a final failure


def test_the_counter_reads_each_finished_trial_once_and_agrees_with_a_full_tally(tmp_path: Path) -> None:
    """Counted after every step of a study with running trials, retries and out-of-order endings."""
    study = _study(tmp_path)
    counter = recovery.Counter(maximize=True)
    seen: list[int] = []

    def check() -> None:
        trials = study.get_trials(deepcopy=False)
        tally, best, seconds = counter.update(trials)
        assert tally == _full_tally(trials)
        complete = [t for t in trials if t.state == TS.COMPLETE]
        assert (best.number if best else None) == (max(complete, key=lambda t: t.value).number if complete else None)
        assert seconds * 0.5 / 3600 == pytest.approx(recovery.gpu_hours(trials, 0.5), abs=1e-5)
        # every complete trial's seconds, one ending before a lower-numbered running one too (the finalists' reserve)
        assert sorted(counter.durations) == sorted(recovery.trial_seconds(t) for t in complete)
        seen.extend(t.number for t in counter.take_completed())

    a, b = study.ask(), study.ask()
    a.suggest_float("x", 0, 1), b.suggest_float("x", 0, 1)
    check()
    study.tell(b, 0.7)                                   # ends before a: not settled yet
    check()
    study.tell(a, state=TS.FAIL)
    check()
    assert recovery.enqueue_retry(study, a.number, {"x": 0.5}, {}, fault=True, max_retries=2)
    check()                                              # a is now replaced by its queued retry
    retry, c = study.ask(), study.ask()
    retry.suggest_float("x", 0, 1), c.suggest_float("x", 0, 1)
    study.tell(c, 0.9)
    study.tell(retry, state=TS.PRUNED)
    check()
    d = study.ask()
    study.tell(d, state=TS.FAIL)                          # no retry: a final failure
    check()
    assert counter.settled == 5 and sorted(seen) == [b.number, c.number]   # each complete trial handed out once


def test_only_one_of_two_recoverers_fails_a_stale_trial(tmp_path: Path) -> None:
    study = _study(tmp_path)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage = study._storage._backend
    first = recovery.fail_stale(study, storage, [trial._trial_id], grace_period=5, max_retries=2, skip=set())
    second = recovery.fail_stale(study, storage, [trial._trial_id], grace_period=5, max_retries=2, skip=set())
    assert first == [trial.number] and second == []
    trials = study.get_trials()
    assert trials[0].state == TS.FAIL and trials[0].user_attrs["reason"].startswith("coordinator lost")
    assert len([t for t in trials if t.state == TS.WAITING]) == 1


def _ckpt(epoch: int, size: int = 3) -> bytes:
    import numpy as np

    return checkpoint.pack(checkpoint.Checkpoint(epoch, [np.full(size, epoch, np.float32)], [np.int64(epoch)],
                                                 0.5, epoch, None, {e: 0.1 * e for e in range(1, epoch + 1)}))


def test_checkpoint_slots_are_written_whole_and_checked_when_read(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "artifacts"), "study one/x")
    folder = tmp_path / "artifacts" / "study_one_x"
    assert store.load(7) == (None, "")
    store.save(7, 1, _ckpt(1))
    store.save(7, 2, _ckpt(2))
    data, note = store.load(7)
    assert checkpoint.read_meta(data)["epoch"] == 2 and note == ""
    assert sorted(p.name for p in folder.iterdir()) == ["config-7.0.ckpt", "config-7.1.ckpt"]   # no temporary left

    slot = folder / "config-7.0.ckpt"                 # epoch 2's slot: one flipped byte in its arrays
    blob = bytearray(slot.read_bytes())
    blob[-200] ^= 0xFF
    slot.write_bytes(bytes(blob))
    data, note = store.load(7)
    assert checkpoint.read_meta(data)["epoch"] == 1, "the other slot, whose checksum holds"
    assert "configuration 7 was unusable (slot 0: its checksum does not match" in note and "resumed from epoch 1" in note
    (folder / "config-7.1.ckpt").write_bytes(b"garbage")
    data, note = store.load(7)
    assert data is None and "started at epoch 0" in note and "slot 1: not a sweeps checkpoint" in note

    (folder / "config-8.0.ckpt").write_bytes(_ckpt(4))      # written before checksums: still readable
    assert checkpoint.read_meta(store.load(8)[0])["epoch"] == 4
    store.remove(7)
    store.remove(7)                           # twice is fine
    assert store.load(7) == (None, "") and sorted(p.name for p in folder.iterdir()) == ["config-8.0.ckpt"]
    with pytest.raises(ValueError):
        checkpoint.read_meta(b"not a checkpoint")


def test_a_full_disk_leaves_the_slot_as_it_was(tiny_disk: Path) -> None:
    """A store on a 64 KiB tmpfs: the write that does not fit fails with ENOSPC, and the slot keeps its epoch."""
    import errno

    store = CheckpointStore(str(tiny_disk), "s")
    store.save(3, 2, _ckpt(2))
    with pytest.raises(OSError) as full:
        store.save(3, 4, _ckpt(4, size=40_000))        # the same slot (even epochs): 160 KB into 64 KiB
    assert full.value.errno == errno.ENOSPC
    assert checkpoint.read_meta(store.load(3)[0])["epoch"] == 2
    assert sorted(p.name for p in (tiny_disk / "s").iterdir()) == ["config-3.0.ckpt"]     # no temporary left


def test_default_checkpoint_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_location(f"sqlite:///{tmp_path}/a/s.db") == str(tmp_path / "a" / "sweeps_artifacts")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_location("postgresql://u@h/db") == str(tmp_path / "data" / "sweeps" / "artifacts")


def test_checkpoints_in_an_s3_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """s3:// goes through Optuna's Boto3ArtifactStore to a real S3 API (moto's server, on loopback)."""
    import subprocess
    import sys

    import boto3

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for var, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(var, value)
        client = boto3.client("s3")
        wait_for(lambda: client.create_bucket(Bucket="sweeps-ckpt"), "moto_server to make a bucket", timeout=30,
                 proc=server, interval=0.3)
        store = CheckpointStore("s3://sweeps-ckpt/team/a", "study-1")
        store.save(4, 1, _ckpt(1))
        store.save(4, 2, _ckpt(2))
        assert checkpoint.read_meta(store.load(4)[0])["epoch"] == 2
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="sweeps-ckpt")["Contents"])
        assert keys == ["team/a/study-1/config-4.0.ckpt", "team/a/study-1/config-4.1.ckpt"]
        store.remove(4)
        assert store.load(4) == (None, "") and client.list_objects_v2(Bucket="sweeps-ckpt")["KeyCount"] == 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_resumed_sampler_does_not_replay_the_first_run(tmp_path: Path) -> None:
    from sweeps import algorithms
    from sweeps.config import from_dict
    from tests.helpers import TINY_SPACE

    config = from_dict({**TINY_SPACE, "sampler": {"name": "tpe", "seed": 3}}, source="test")

    def first_draws(salt: int) -> list[float]:
        study = optuna.create_study(sampler=algorithms.sampler(config, salt))
        return [study.ask().suggest_float("x", 0, 1) for _ in range(3)]

    assert first_draws(0) == first_draws(0)          # an uninterrupted run is reproducible from the seed
    assert first_draws(12345) != first_draws(0)      # a resume draws new start-up points
