"""Per-epoch checkpoints: a local (or shared) folder by default, or S3 through Optuna's artifact store.

Workers send a checkpoint with each epoch report; the coordinator writes it
here under the trial's configuration, so a retry of that configuration (on
any machine that reaches the store) resumes from its last epoch. Each
configuration has two slots written in turn, each write whole or not at all,
each read checked against a checksum: a damaged slot is passed over for the
other, or the retry starts at epoch 0, and the trial says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from typing import Any

from sweeps.errors import SweepsError, first_line
from workers.checkpoint import read_meta


def default_location(storage_url: str) -> str:
    """Next to the SQLite file; for a database server, the user's data folder."""
    if storage_url.startswith("sqlite:///"):
        path = storage_url.split(":///", 1)[1]
        if path and path != ":memory:":
            return os.path.join(os.path.dirname(os.path.abspath(path)), "sweeps_artifacts")
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data_home, "sweeps", "artifacts")


MAGIC = b"SWCK1"      # then the SHA-256 of the payload, then the payload (a workers/checkpoint.py .npz)


def seal(payload: bytes) -> bytes:
    return MAGIC + hashlib.sha256(payload).digest() + payload


def unseal(blob: bytes) -> bytes:
    """The payload, checked against its checksum; ValueError when it does not match or cannot be read."""
    if blob.startswith(MAGIC):
        digest, payload = blob[len(MAGIC):len(MAGIC) + 32], blob[len(MAGIC) + 32:]
        if hashlib.sha256(payload).digest() != digest:
            raise ValueError("its checksum does not match (a damaged file)")
    else:
        payload = blob      # written before checksums: readable if its metadata is
    read_meta(payload)
    return payload


class CheckpointStore:
    """Two slots per configuration under one prefix per study, each checked by a checksum when read.

    A folder is written through a temporary file renamed into place (a crash
    mid-write leaves the slot as it was); S3 puts whole objects, with bounded
    timeouts so a slow store cannot stall the coordinator for long.
    """

    def __init__(self, location: str, study_key: str) -> None:
        self.location = location
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", study_key)
        self.s3: Any = None
        if location.startswith("s3://"):
            try:
                import boto3
                from botocore.config import Config
                from optuna.artifacts import Boto3ArtifactStore
            except ImportError:
                raise SweepsError(f"checkpoints.store {location} needs boto3: pip install 'sweeps[s3]'") from None
            bucket, _, prefix = location[len("s3://"):].partition("/")
            client = boto3.client("s3", config=Config(connect_timeout=5, read_timeout=60,
                                                      retries={"max_attempts": 3, "mode": "standard"}))
            self.s3 = Boto3ArtifactStore(bucket, client=client)
            self.prefix = f"{prefix.strip('/')}/{safe}".lstrip("/")
        else:
            try:
                os.makedirs(os.path.join(location, safe), exist_ok=True)
            except OSError as e:
                raise SweepsError(f"checkpoints.store {location}: cannot create it ({e.strerror}); set "
                                  "checkpoints.store to a writable folder, or point a stored sweep at one with "
                                  "`sweeps resume NAME --checkpoint-store DIR`") from None
            self.prefix = safe

    def _id(self, config_id: int, slot: int) -> str:
        return f"{self.prefix}/config-{config_id}.{slot}.ckpt"

    def save(self, config_id: int, epoch: int, data: bytes) -> None:
        """Replace the slot of this epoch's parity, whole or not at all; raises OSError etc. when the store does."""
        blob, key = seal(data), self._id(config_id, epoch % 2)
        if self.s3 is not None:
            self.s3.write(key, io.BytesIO(blob))
            return
        path = os.path.join(self.location, key)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    def _read(self, key: str) -> bytes:
        if self.s3 is not None:
            with self.s3.open_reader(key) as f:
                return bytes(f.read())
        with open(os.path.join(self.location, key), "rb") as f:
            return f.read()

    def load(self, config_id: int) -> tuple[bytes | None, str]:
        """The newest checkpoint of a configuration that passes its checksum, and a note when a newer one did not
        (so a retry that starts earlier says why)."""
        good: list[tuple[int, bytes]] = []
        bad: list[str] = []
        for slot in (0, 1):
            try:
                blob = self._read(self._id(config_id, slot))
            except Exception:      # absent (never written, or removed)
                continue
            try:
                payload = unseal(blob)
            except ValueError as e:
                bad.append(f"slot {slot}: {e}")
                continue
            good.append((int(read_meta(payload)["epoch"]), payload))
        best = max(good, key=lambda g: g[0]) if good else None
        note = ""
        if bad:
            where = f"resumed from epoch {best[0]}" if best else "started at epoch 0"
            note = f"a checkpoint of configuration {config_id} was unusable ({'; '.join(bad)}): {where}"
        return (best[1] if best else None), note

    def remove(self, config_id: int) -> None:
        for slot in (0, 1):
            try:
                if self.s3 is not None:
                    self.s3.remove(self._id(config_id, slot))
                else:
                    os.remove(os.path.join(self.location, self._id(config_id, slot)))
            except Exception:  # already gone
                pass


class Retention:
    """Keep the checkpoints of the ``keep_best`` best complete configurations only, so disk use stays bounded."""

    def __init__(self, store: CheckpointStore, keep_best: int, maximize: bool) -> None:
        self.store = store
        self.keep_best = keep_best
        self.maximize = maximize
        self.kept: dict[int, float] = {}      # complete configurations whose checkpoints are kept: value
        self.removed: set[int] = set()        # configurations whose checkpoints are gone

    def discard(self, config_id: int) -> None:
        """A configuration that ended without completing: nothing will ever resume or export it."""
        self.store.remove(config_id)
        self.removed.add(config_id)

    def rank(self, completed: dict[int, float], protect: frozenset[int] = frozenset()) -> None:
        """Complete configurations (config id: value) seen since the last call; the worst beyond keep_best go,
        but for ``protect``: the runs the sweep hands over now (an ensemble's may be more than keep_best, or
        rank below other trials), so `best --evaluate` and `export` never retrain them.

        A configuration that completes later can only push others further
        down, so none is removed too early.
        """
        self.kept.update((cid, value) for cid, value in completed.items() if cid not in self.removed)
        ranked = sorted((cid for cid in self.kept if cid not in protect), key=self.kept.__getitem__,
                        reverse=self.maximize)
        for cid in ranked[max(0, self.keep_best - len(protect & self.kept.keys())):]:
            self.discard(cid)
            del self.kept[cid]


class Checkpoints:
    """A sweep's checkpoints as the coordinator uses them: a retry's resume point, per-epoch saves that never
    stop a trial (failures are counted for `sweeps status`), and the retention of the keep_best best."""

    def __init__(self, store: CheckpointStore, keep_best: int, maximize: bool,
                 errors: dict[str, Any] | None = None) -> None:
        self.store = store
        self.retention = Retention(store, keep_best, maximize)
        self.errors: dict[str, Any] = {"count": 0, "last": "", **(errors or {})}   # the study's, all runs
        self.unsaved = False             # errors counted since they were last stored in the study
        self.said_missing = False

    def resume_point(self, config_id: int) -> tuple[bytes | None, str, str]:
        """The retry's checkpoint; a note for the trial (a damaged slot passed over); a line to say once."""
        data, note = self.store.load(config_id)
        say = note
        if data is None and not note and not self.said_missing:
            self.said_missing, say = True, (f"no checkpoint of configuration {config_id} in {self.store.location}: "
                                            "retries without one start at epoch 0")
        return data, note, say

    def save(self, config_id: int, epoch: int, data: bytes) -> str:
        """Store one epoch's state; what went wrong ('' when nothing did): the trial goes on regardless."""
        try:
            self.store.save(config_id, epoch, data)
            return ""
        except Exception as e:      # disk full, permissions, S3 down: only a retry would start earlier
            self.errors["count"] += 1
            self.errors["last"] = first_line(e)
            self.unsaved = True
            return f"checkpoint of configuration {config_id} not saved: {first_line(e)}"
