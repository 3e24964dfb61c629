"""The one place that reads sweep YAML: a validated ``SweepConfig``, and the trial specs built from it.

Every mistake becomes one ``ConfigError`` line naming the file, the key and
the fix (the checks, one method per section, are in ``sweeps/validation.py``).
The resolved config is a plain dict (``to_dict``) stored in the study, so
``resume`` rebuilds exactly the same sweep from the database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from sweeps import builder
from sweeps.objectives import bound_dict
from sweeps.parameters import Param
from sweeps.validation import ConfigError, Sections
from workers.hyperparameters import DEFAULTS
from workers.spec import SIZES, Bound, ModelBuilder, TrialSpec

__all__ = ["ConfigError", "DatasetConfig", "Param", "SweepConfig", "from_dict", "load"]


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    path: str | None = None
    image_size: tuple[int, int] | None = None   # folders: resize every image to this
    color: str = "grayscale"                   # folders: grayscale | rgb
    val_fraction: float = 0.2
    flip: bool = False                         # horizontal flips keep the label
    test_fraction: float = 0.1                 # held out before the sweep, for `best --evaluate` only
    on_corrupt: str = "fail"                   # folders: an unreadable image fails the load, or is skipped
    max_images: int | None = None              # use a stratified sample of this many images (quick runs)
    folds: int | None = None                   # k-fold cross-validation instead of the val_fraction split

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": self.path,
            "image_size": list(self.image_size) if self.image_size else None,
            "color": self.color, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
            "flip": self.flip, "on_corrupt": self.on_corrupt, "max_images": self.max_images, "folds": self.folds,
        }


@dataclass(frozen=True)
class SweepConfig:
    study: str
    parameters: dict[str, Param]
    dataset: DatasetConfig
    metric: str = "val_accuracy"
    direction: str = "maximize"
    epochs: int = 10
    seed: int = 0
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    n_trials: int = 20
    timeout: float | None = None
    parallel: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    max_retries: int = 2
    heartbeat_interval: float = 10.0
    grace_period: float = 60.0
    database_timeout: float = 300.0
    stall_timeout: float | None = None    # seconds without a report before a trial counts as stalled (None: auto)
    checkpoint_store: str | None = None   # folder or s3://bucket/prefix; None: decided from the storage URL
    keep_best: int = 3                    # finished trials whose last checkpoint is kept
    deterministic: bool = False           # TensorFlow op determinism: `rerun` repeats a value exactly
    mixed_precision: bool = False         # mixed_float16 on a GPU, mixed_bfloat16 on a CPU
    jit_compile: bool = False             # XLA-compile the training step
    steps_per_execution: int = 1          # batches per compiled call: less overhead for small models
    backend: str = "tensorflow"           # Keras backend of the workers: tensorflow or jax
    gpu_hours: float | None = None        # budget: no trial starts once this much GPU time is spent
    max_failed_trials: int | None = None  # budget: stop once this many configurations failed for good (None: auto)
    objectives: tuple[tuple[str, str], ...] = ()   # objectives after the metric: (measure, goal)
    constraints: tuple[Bound, ...] = ()   # bounds on measures a model must meet
    model: ModelBuilder | None = None     # the user's model builder; None: the built-in architectures
    tensorboard: str | bool | None = None  # a log folder, false (off), or None: beside a checkpoint folder
    seed_trials: tuple[dict[str, Any], ...] = ()   # configurations to try first (enqueued when the study is made)
    finalists: int = 3                    # top configurations retrained after the search (0: none)
    finalist_seeds: int = 2               # more seeds each finalist is trained with
    finalist_ensemble: str = ""           # "winner" / "finalists": those runs averaged are handed over; "": one run

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, in the YAML's own shape (JSON-safe)."""
        return {
            "study": self.study,
            "metric": {"name": self.metric, "goal": self.direction},
            **({"objectives": [{"name": n, "goal": g} for n, g in self.all_objectives]} if self.objectives else {}),
            **({"constraints": {b.measure: bound_dict(b) for b in self.constraints}} if self.constraints else {}),
            **({"model": builder.to_dict(self.model)} if self.model else {}),
            **({"tensorboard": self.tensorboard} if self.tensorboard is not None else {}),
            **({"seed_trials": [dict(t) for t in self.seed_trials]} if self.seed_trials else {}),
            "finalists": {"count": self.finalists, "seeds": self.finalist_seeds,
                          **({"ensemble": self.finalist_ensemble} if self.finalist_ensemble else {})},
            "dataset": self.dataset.to_dict(),
            "epochs": self.epochs,
            "seed": self.seed,
            "deterministic": self.deterministic,
            "mixed_precision": self.mixed_precision,
            "jit_compile": self.jit_compile,
            "steps_per_execution": self.steps_per_execution,
            "backend": self.backend,
            "sampler": dict(self.sampler),
            "pruner": dict(self.pruner),
            "budget": {"n_trials": self.n_trials, "timeout": self.timeout, "gpu_hours": self.gpu_hours,
                       "max_failed_trials": self.max_failed_trials},
            "parallel": self.parallel,
            "resources": {"cpus": self.cpus, "gpus": self.gpus},
            "recovery": {"max_retries": self.max_retries, "heartbeat_interval": self.heartbeat_interval,
                         "grace_period": self.grace_period, "database_timeout": self.database_timeout,
                         "stall_timeout": self.stall_timeout},
            "checkpoints": {"store": self.checkpoint_store, "keep_best": self.keep_best},
            "parameters": {name: p.to_dict() for name, p in self.parameters.items()},
        }

    @property
    def all_objectives(self) -> list[tuple[str, str]]:
        """(name, goal) of every objective, the metric first."""
        return [(self.metric, self.direction), *self.objectives]

    @property
    def failure_limit(self) -> int:
        """Configurations that may fail for good before the sweep stops: ``max_failed_trials``, else a
        quarter of ``n_trials`` and at least 3."""
        return self.max_failed_trials or max(3, self.n_trials // 4)

    @property
    def threads(self) -> int:
        """CPU threads a trial's TensorFlow may use: its whole CPUs, at least one."""
        return max(1, int(self.cpus))

    @property
    def maximize(self) -> bool:
        """The metric's goal, decided here once: the study, the trainer and every reader follow it."""
        return self.direction == "maximize"

    def trial_spec(self, number: int, params: dict[str, Any], seed: int, *, checkpoint: bytes | None = None,
                   save_checkpoints: bool = True, epochs: int | None = None) -> TrialSpec:
        """What a worker trains: ``params`` (searched and fixed) over the defaults, and this sweep's settings."""
        return TrialSpec(number=number, params={**DEFAULTS, **params}, epochs=self.epochs if epochs is None else epochs,
                         seed=seed, metric=self.metric, maximize=self.maximize, flip=self.dataset.flip,
                         threads=self.threads, checkpoint=checkpoint, save_checkpoints=save_checkpoints,
                         deterministic=self.deterministic, folds=self.dataset.folds or 0,
                         mixed_precision=self.mixed_precision, jit_compile=self.jit_compile,
                         steps_per_execution=self.steps_per_execution, model=self.model,
                         limits=tuple(b for b in self.constraints if b.measure in SIZES))

    @property
    def steps(self) -> int:
        """Pruning steps per trial: epochs, times the folds under cross-validation."""
        return self.epochs * (self.dataset.folds or 1)

    def replace(self, **changes: Any) -> SweepConfig:
        """A copy with command-line overrides, validated like the YAML."""
        d = self.to_dict()
        if changes.get("study") is not None:
            d["study"] = changes["study"]
        if changes.get("n_trials") is not None:
            d["budget"]["n_trials"] = changes["n_trials"]
        for key in ("timeout", "max_failed_trials"):
            if changes.get(key) is not None:
                d["budget"][key] = changes[key]
        if changes.get("parallel") is not None:
            d["parallel"] = changes["parallel"]
        if changes.get("checkpoint_store") is not None:
            d["checkpoints"]["store"] = changes["checkpoint_store"]
        return from_dict(d, source="command line")


def load(path: str | os.PathLike[str]) -> SweepConfig:
    """Read and validate a sweep YAML file; relative dataset paths are taken from its folder."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; give the path of a sweep YAML such as search_spaces/digits.yaml") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}; fix the syntax there") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
    return from_dict(raw, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def from_dict(raw: Any, *, source: str, base_dir: str | None = None) -> SweepConfig:
    """Validate a config dict (from YAML, or as stored in a study)."""
    fields = Sections(source, base_dir).all(raw)
    fields["dataset"] = DatasetConfig(**fields["dataset"])
    return SweepConfig(**fields)
