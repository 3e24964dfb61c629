"""A trial's state after an epoch, as bytes: weights, optimizer state, epoch and best-so-far.

Plain numpy (``.npz``), so the control plane can read the epoch without
TensorFlow and store the bytes wherever the sweep keeps artifacts; a retried
trial continues from here instead of from epoch 0 (DESIGN principle 3).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = 1


@dataclass
class Checkpoint:
    epoch: int                              # epochs completed (1-based count)
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]             # the optimizer's variables, iterations included
    best: float | None = None               # best metric value so far
    best_epoch: int = 0
    best_weights: list[np.ndarray] | None = None   # None: the best epoch is this one
    values: dict[int, float] = field(default_factory=dict)   # epoch -> reported metric


def pack(ck: Checkpoint) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    for prefix, group in (("w", ck.weights), ("o", ck.optimizer), ("b", ck.best_weights or [])):
        for i, a in enumerate(group):
            arrays[f"{prefix}{i}"] = np.asarray(a)
    meta = {"format": FORMAT, "epoch": ck.epoch, "best": ck.best, "best_epoch": ck.best_epoch,
            "n": [len(ck.weights), len(ck.optimizer), len(ck.best_weights or [])],
            "values": {str(k): v for k, v in ck.values.items()}}
    buffer = io.BytesIO()
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub takes **kwds for its allow_pickle flag
    return buffer.getvalue()


def read_meta(data: bytes) -> dict[str, Any]:
    """The epoch and best value without loading the weights; raises ValueError on a damaged file."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(npz["__meta__"].tobytes().decode())
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"not a sweeps checkpoint: {e}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {meta.get('format')} is not {FORMAT}")
    return meta


def unpack(data: bytes) -> Checkpoint:
    meta = read_meta(data)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        nw, no, nb = meta["n"]
        weights = [npz[f"w{i}"] for i in range(nw)]
        optimizer = [npz[f"o{i}"] for i in range(no)]
        best_weights = [npz[f"b{i}"] for i in range(nb)] if nb else None
    return Checkpoint(meta["epoch"], weights, optimizer, meta["best"], meta["best_epoch"], best_weights,
                      {int(k): v for k, v in meta["values"].items()})
