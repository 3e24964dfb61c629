"""Per-epoch checkpoints in an Optuna artifact store: a local folder by default, or S3.

Workers send a checkpoint with each epoch report; the coordinator writes it
here under the trial's configuration, so a retry of that configuration (on
any machine that reaches the store) resumes from its last epoch. Each
configuration has two slots written in turn: a write cut short by a crash
spoils one slot, and the other still holds the epoch before.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

from sweeps.errors import SweepsError
from workers.checkpoint import read_meta


def default_location(storage_url: str) -> str:
    """Next to the SQLite file; for a database server, the user's data folder."""
    if storage_url.startswith("sqlite:///"):
        path = storage_url.split(":///", 1)[1]
        if path and path != ":memory:":
            return os.path.join(os.path.dirname(os.path.abspath(path)), "sweeps_artifacts")
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data_home, "sweeps", "artifacts")


class CheckpointStore:
    """Two slots per configuration under one prefix per study."""

    def __init__(self, location: str, study_key: str) -> None:
        self.location = location
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", study_key)
        if location.startswith("s3://"):
            try:
                from optuna.artifacts import Boto3ArtifactStore
                bucket, _, prefix = location[len("s3://"):].partition("/")
                self.store: Any = Boto3ArtifactStore(bucket)
            except ImportError:
                raise SweepsError(f"checkpoints.store {location} needs boto3: pip install 'sweeps[s3]'") from None
            self.prefix = f"{prefix.strip('/')}/{safe}".lstrip("/")
        else:
            from optuna.artifacts import FileSystemArtifactStore

            try:
                os.makedirs(os.path.join(location, safe), exist_ok=True)
            except OSError as e:
                raise SweepsError(f"checkpoints.store {location}: cannot create it ({e.strerror}); "
                                  "set checkpoints.store to a writable folder") from None
            self.store = FileSystemArtifactStore(location)
            self.prefix = safe

    def _id(self, config_id: int, slot: int) -> str:
        return f"{self.prefix}/config-{config_id}.{slot}.ckpt"

    def save(self, config_id: int, epoch: int, data: bytes) -> None:
        self.store.write(self._id(config_id, epoch % 2), io.BytesIO(data))

    def load(self, config_id: int) -> bytes | None:
        """The newest readable checkpoint of a configuration, or None."""
        best: tuple[int, bytes] | None = None
        for slot in (0, 1):
            try:
                with self.store.open_reader(self._id(config_id, slot)) as f:
                    data = f.read()
                epoch = int(read_meta(data)["epoch"])
            except Exception:  # missing, or spoilt by a crash mid-write
                continue
            if best is None or epoch > best[0]:
                best = (epoch, data)
        return best[1] if best else None

    def remove(self, config_id: int) -> None:
        for slot in (0, 1):
            try:
                self.store.remove(self._id(config_id, slot))
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

    def rank(self, completed: dict[int, float]) -> None:
        """Complete configurations (config id: value) seen since the last call; the worst beyond keep_best go.

        A configuration that completes later can only push others further
        down, so none is removed too early.
        """
        self.kept.update((cid, value) for cid, value in completed.items() if cid not in self.removed)
        ranked = sorted(self.kept, key=self.kept.__getitem__, reverse=self.maximize)
        for cid in ranked[self.keep_best:]:
            self.discard(cid)
            del self.kept[cid]
