"""Run or resume a sweep: the data loaded and checked, the study created or loaded, a dispatcher chosen,
then the coordinator (``sweeps/coordinator.py``) runs the trials.

Nothing is written to the study before the config and the dataset have been
checked; a resume overrides only what its command line says.
"""

from __future__ import annotations

from typing import Any

from sweeps import builder, warmstart
from sweeps import study as schema
from sweeps.checkpoints import CheckpointStore, default_location
from sweeps.config import ConfigError, SweepConfig, load
from sweeps.coordinator import Coordinator
from sweeps.dispatch import Dispatcher
from sweeps.errors import SweepsError
from sweeps.progress import ProgressCallback
from sweeps.storage import resolve_url
from workers import data as datasets


def run_sweep(config: SweepConfig, storage_url: str | None = None, *, ray_address: str | None = None,
              on_progress: ProgressCallback | None = None, dispatcher: Dispatcher | None = None) -> dict[str, Any]:
    """Create the study and run it until its budget is met (on Ray unless a ``dispatcher`` is given)."""
    config, arrays, notices = _checked(config, storage_url)
    dispatcher = dispatcher or _ray(config, ray_address)          # a wrong address is said before the study exists
    study = _create(config, storage_url, arrays)
    coordinator = Coordinator(study, config, arrays, dispatcher, on_progress=on_progress)
    coordinator.notices += notices
    return coordinator.run()


def fork_sweep(old: str, new: str, space_path: str, storage_url: str | None = None) -> dict[str, Any]:
    """A new study from ``space_path`` (named ``new``) holding the finished trials of ``old`` that fit its space;
    ``sweeps resume NEW`` runs it."""
    old_study = schema.load(old, storage_url)
    config = load(space_path).replace(study=new)
    warmstart.check_fork(old_study, schema.load_config(old_study), config)
    config, arrays, notices = _checked(config, storage_url)
    study = _create(config, storage_url, arrays)
    copied, finished = warmstart.copy_trials(old_study, study, config)
    study.set_user_attr(warmstart.FORK_ATTR, {"study": old, "trials": copied})
    return {"study": new, "forked_from": old, "copied": copied, "of": finished, "notices": notices}


def _checked(config: SweepConfig, storage_url: str | None) -> tuple[SweepConfig, datasets.Arrays, list[str]]:
    """The dataset loaded and the user's model built once: a problem is one line before the study exists."""
    arrays = _load_data(config)
    if config.model is not None:
        builder.check(config, arrays.input_shape, arrays.n_classes)
    notices = []
    if config.checkpoint_store is None:
        url = resolve_url(storage_url)
        config = config.replace(checkpoint_store=default_location(url))
        if not url.startswith("sqlite"):
            notices.append(f"checkpoints go to {config.checkpoint_store} on this machine; to resume on another, set "
                           "checkpoints.store to a folder every machine shares or s3://bucket/prefix "
                           "(or later: sweeps resume --checkpoint-store)")
    return config, arrays, notices


def _create(config: SweepConfig, storage_url: str | None, arrays: datasets.Arrays) -> Any:
    study = schema.create(config, storage_url, {**config.dataset.to_dict(), **arrays.describe()})
    warmstart.seed(study, config)
    return study


def resume_sweep(name: str, storage_url: str | None = None, *, n_trials: int | None = None,
                 max_failed_trials: int | None = None, checkpoint_store: str | None = None,
                 ray_address: str | None = None, on_progress: ProgressCallback | None = None,
                 dispatcher: Dispatcher | None = None) -> dict[str, Any]:
    """Continue a stored study until its budget is met; the config comes from the study, the budget and the
    checkpoint store may change (``checkpoint_store``: a folder or s3:// this machine reaches)."""
    study = schema.load(name, storage_url)
    config = schema.load_config(study)
    arrays = _load_data(config, resuming=True)     # before anything is written to the study
    changes = {"n_trials": n_trials, "max_failed_trials": max_failed_trials, "checkpoint_store": checkpoint_store}
    changed = any(v is not None for v in changes.values())
    if changed:
        config = config.replace(**changes)
        key = schema.checkpoint_key(study)
        if checkpoint_store is not None and key:
            CheckpointStore(str(config.checkpoint_store), key)        # reachable, or one line before any write
    dispatcher = dispatcher or _ray(config, ray_address)
    if changed:
        study.set_user_attr(schema.CONFIG_ATTR, config.to_dict())
    return Coordinator(study, config, arrays, dispatcher, on_progress=on_progress).run()


def _ray(config: SweepConfig, address: str | None) -> Dispatcher:
    from sweeps.raydispatch import RayDispatcher

    return RayDispatcher(config, address)


def _load_data(config: SweepConfig, resuming: bool = False) -> datasets.Arrays:
    try:
        return datasets.load(config.dataset.to_dict(), seed=config.seed)
    except datasets.DatasetError as e:
        if resuming:
            raise SweepsError(f"the dataset of study {config.study!r} is not reachable from this machine: {e} "
                              "(resume needs the same dataset path as the machine that started the sweep)") from None
        raise ConfigError(f"dataset: {e}") from None
