"""Trial artifacts in an Optuna artifact store, which optuna-dashboard shows beside each trial.

The store sits at the sweep's ``checkpoints.store`` (a folder, or an S3
bucket); the coordinator uploads each complete trial's validation confusion
matrix there, and ``sweeps dashboard`` serves it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any


def artifact_store(location: str | None) -> Any:
    """The Optuna artifact store at a checkpoints.store location (a folder or s3://bucket)."""
    if not location:
        return None
    if location.startswith("s3://"):
        from optuna.artifacts import Boto3ArtifactStore

        return Boto3ArtifactStore(location[len("s3://"):].split("/", 1)[0])
    from optuna.artifacts import FileSystemArtifactStore

    return FileSystemArtifactStore(location)


def upload_confusion_matrix(store: Any, trial: Any, matrix: list[list[int]], class_names: Sequence[str]) -> None:
    """The trial's validation confusion matrix as a PNG artifact of the trial."""
    from optuna.artifacts import upload_artifact

    from sweeps.plots import confusion_matrix_png

    with tempfile.TemporaryDirectory() as tmp:
        path = confusion_matrix_png(matrix, class_names, os.path.join(tmp, "confusion_matrix.png"),
                                    title=f"trial {trial.number}: validation confusion matrix")
        upload_artifact(study_or_trial=trial, file_path=path, artifact_store=store, mimetype="image/png")
