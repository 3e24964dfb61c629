"""One attempt at a trial, whatever runs it: the data made local, any exception a typed failed result.

Shared by the Ray trial slot (``workers/remote.py``) and the coordinator's
in-process dispatcher (``sweeps/dispatch.py``), so both report failures the
same way: a reason for people, a ``Failure`` kind for code.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

from workers.data import Arrays, DatasetError, FolderRef
from workers.spec import Failure, Reporter, TrialResult, TrialSpec, TrialState

Train = Callable[[TrialSpec, Arrays, Reporter], TrialResult]


def materialize(data: Any) -> tuple[Arrays, str]:
    """The training arrays, and where they came from (``object store``, or for a folder memory, cache or decoded)."""
    if isinstance(data, FolderRef):      # an image folder: read here, by path, through the decode cache
        return data.materialize()
    return data, "object store"


def run(train: Train, spec: TrialSpec, data: Any, reporter: Reporter) -> tuple[TrialResult, str]:
    """Train one trial; returns its result and where its data came from. Never raises for a trial's fault."""
    try:
        arrays, source = materialize(data)
    except DatasetError as e:     # this machine cannot read the folder: no trial can run here
        return failed(spec.number, f"dataset not readable on this worker: {e}", Failure.DATASET), ""
    except Exception as e:        # any other trouble reading it fails this trial like an error in training
        return error(spec.number, e), ""
    try:
        return train(spec, arrays, reporter), source
    except Exception as e:  # the trial fails; whatever runs it stays usable
        return error(spec.number, e), source


def error(number: int, e: BaseException) -> TrialResult:
    """A failed result naming the exception and where it was raised (file:line)."""
    last = traceback.extract_tb(e.__traceback__)[-1:]
    where = f" ({os.path.basename(last[0].filename)}:{last[0].lineno})" if last else ""
    return failed(number, f"{type(e).__name__}: {e}{where}", Failure.ERROR)


def failed(number: int, reason: str, failure: Failure, epochs_run: int = 0) -> TrialResult:
    return TrialResult(number, TrialState.FAILED, None, epochs_run, reason, failure=failure)
