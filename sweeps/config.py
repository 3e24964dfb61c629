"""The one place that reads sweep YAML: a validated ``SweepConfig``.

Every mistake becomes one ``ConfigError`` line naming the file, the key and
the fix. The resolved config is a plain dict (``to_dict``) stored in the
study, so ``resume`` rebuilds exactly the same sweep from the database.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from sweeps.errors import SweepsError
from workers.spec import (ARCHITECTURES, CLASS_WEIGHTS, LR_SCHEDULES, METRICS, OPTIMIZERS, PARAMETER_DEFAULTS,
                          SAMPLING)

DATASETS = ("digits", "mnist", "npz", "folder")
SAMPLER_OPTIONS = {
    "tpe": {"n_startup_trials", "multivariate", "group", "constant_liar"},
    "random": set(),
    "cmaes": {"n_startup_trials", "restart_strategy"},
    "gp": {"n_startup_trials"},
    "grid": set(),
}
PRUNER_OPTIONS = {
    "median": {"n_startup_trials", "n_warmup_steps", "interval_steps"},
    "successive_halving": {"min_resource", "reduction_factor", "min_early_stopping_rate"},
    "asha": {"min_resource", "reduction_factor", "min_early_stopping_rate"},
    "hyperband": {"min_resource", "max_resource", "reduction_factor"},
    "none": set(),
}
TOP_LEVEL_KEYS = {
    "study", "metric", "dataset", "epochs", "seed", "sampler", "pruner",
    "budget", "parallel", "resources", "parameters", "recovery", "checkpoints", "deterministic",
    "mixed_precision", "jit_compile", "steps_per_execution", "backend",
}
BACKENDS = ("tensorflow", "jax")    # Keras backend of the trial workers
RECOVERY_DEFAULTS: dict[str, float] = {
    "max_retries": 2,           # retries of one configuration after worker faults
    "heartbeat_interval": 10,   # seconds between heartbeats of each running trial
    "grace_period": 60,         # seconds without a heartbeat before a trial counts as lost
    "database_timeout": 300,    # seconds of database outage before the coordinator gives up
}
# (lowest, highest, lowest allowed?, highest allowed?) for numeric parameters.
PARAMETER_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.0, math.inf, False, False),
    "batch_size": (1, math.inf, True, False),
    "momentum": (0.0, 1.0, True, False),
    "weight_decay": (0.0, math.inf, True, False),
    "dropout": (0.0, 1.0, True, False),
    "l2": (0.0, math.inf, True, False),
    "augment": (0.0, 1.0, True, True),
    "width": (1, 1024, True, True),
    "depth": (1, 16, True, True),
    "label_smoothing": (0.0, 1.0, True, False),
    "early_stopping": (0, 1000, True, True),
    "random_erasing": (0.0, 1.0, True, True),
    "mixup_alpha": (0.0, math.inf, True, False),
    "freeze_epochs": (0, 10000, True, True),
    "unfreeze_layers": (0, 10000, True, True),
    "fine_tune_lr_factor": (0.0, math.inf, False, True),
}
WEIGHTS = ("none", "imagenet")     # or a path of a .weights.h5 file
CHOICES = {"optimizer": OPTIMIZERS, "architecture": ARCHITECTURES, "class_weight": CLASS_WEIGHTS, "sampling": SAMPLING,
           "lr_schedule": LR_SCHEDULES}
BOOLEANS = {name for name, default in PARAMETER_DEFAULTS.items() if isinstance(default, bool)}


class ConfigError(SweepsError):
    """A sweep YAML (or stored config) that cannot run as written."""


@dataclass(frozen=True)
class Param:
    """One hyperparameter: fixed (``value``), categorical (``values``) or a range."""

    name: str
    value: Any = None
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def fixed(self) -> bool:
        return self.values is None and self.low is None

    @property
    def is_int(self) -> bool:
        return isinstance(PARAMETER_DEFAULTS[self.name], int)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.fixed:
            d["value"] = self.value
        elif self.values is not None:
            d["values"] = list(self.values)
        else:
            d.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                d["step"] = self.step
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when.items()}
        return d


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
    checkpoint_store: str | None = None   # folder or s3://bucket/prefix; None: decided from the storage URL
    keep_best: int = 3                    # finished trials whose last checkpoint is kept
    deterministic: bool = False           # TensorFlow op determinism: `rerun` repeats a value exactly
    mixed_precision: bool = False         # mixed_float16 on a GPU, mixed_bfloat16 on a CPU
    jit_compile: bool = False             # XLA-compile the training step
    steps_per_execution: int = 1          # batches per compiled call: less overhead for small models
    backend: str = "tensorflow"           # Keras backend of the workers: tensorflow or jax
    gpu_hours: float | None = None        # budget: no trial starts once this much GPU time is spent

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, in the YAML's own shape (JSON-safe)."""
        return {
            "study": self.study,
            "metric": {"name": self.metric, "goal": self.direction},
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
            "budget": {"n_trials": self.n_trials, "timeout": self.timeout, "gpu_hours": self.gpu_hours},
            "parallel": self.parallel,
            "resources": {"cpus": self.cpus, "gpus": self.gpus},
            "recovery": {"max_retries": self.max_retries, "heartbeat_interval": self.heartbeat_interval,
                         "grace_period": self.grace_period, "database_timeout": self.database_timeout},
            "checkpoints": {"store": self.checkpoint_store, "keep_best": self.keep_best},
            "parameters": {name: p.to_dict() for name, p in self.parameters.items()},
        }

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
        if changes.get("timeout") is not None:
            d["budget"]["timeout"] = changes["timeout"]
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
    v = _Validator(source, base_dir)
    if not isinstance(raw, dict):
        v.fail("", "the file must be a mapping of keys such as study, dataset, parameters")
    v.unknown_keys("", raw, TOP_LEVEL_KEYS)

    study = raw.get("study")
    if not isinstance(study, str) or not study.strip():
        v.fail("study", "needs a name, e.g. `study: digits-demo`")

    metric, direction = v.metric(raw.get("metric", "val_accuracy"))
    dataset = v.dataset(raw.get("dataset"), base_dir)
    epochs = v.integer("epochs", raw.get("epochs", 10), low=1)
    seed = v.integer("seed", raw.get("seed", 0), low=0)
    deterministic = raw.get("deterministic", False)
    if not isinstance(deterministic, bool):
        v.fail("deterministic", f"must be true or false, got {deterministic!r}")
    flags = {}
    for key in ("mixed_precision", "jit_compile"):
        flags[key] = raw.get(key, False)
        if not isinstance(flags[key], bool):
            v.fail(key, f"must be true or false, got {flags[key]!r}")
    steps_per_execution = v.integer("steps_per_execution", raw.get("steps_per_execution", 1), low=1)
    backend = raw.get("backend", "tensorflow")
    if backend not in BACKENDS:
        v.fail("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    sampler = v.component("sampler", raw.get("sampler", "tpe"), SAMPLER_OPTIONS)
    sampler.setdefault("seed", seed)
    sampler["seed"] = v.integer("sampler.seed", sampler["seed"], low=0)
    pruner = v.component("pruner", raw.get("pruner", "median"), PRUNER_OPTIONS)

    budget = raw.get("budget", {}) or {}
    if not isinstance(budget, dict):
        v.fail("budget", "must be a mapping such as {n_trials: 20, timeout: 3600}")
    v.unknown_keys("budget", budget, {"n_trials", "timeout", "gpu_hours"})
    n_trials = v.integer("budget.n_trials", budget.get("n_trials", 20), low=1)
    timeout = budget.get("timeout")
    if timeout is not None:
        timeout = v.number("budget.timeout", timeout, low=0, low_ok=False)
    gpu_hours = budget.get("gpu_hours")
    if gpu_hours is not None:
        gpu_hours = float(v.number("budget.gpu_hours", gpu_hours, low=0, low_ok=False))

    parallel = v.integer("parallel", raw.get("parallel", 1), low=1)
    resources = raw.get("resources", {}) or {}
    if not isinstance(resources, dict):
        v.fail("resources", "must be a mapping such as {cpus: 1, gpus: 0.25}")
    v.unknown_keys("resources", resources, {"cpus", "gpus"})
    cpus = v.number("resources.cpus", resources.get("cpus", 1), low=0)
    gpus = v.number("resources.gpus", resources.get("gpus", 0), low=0)
    if gpu_hours is not None and gpus == 0:
        v.fail("budget.gpu_hours", "counts GPU time, but resources.gpus is 0; set resources.gpus (e.g. 0.25) "
                                   "or use budget.timeout")

    recovery = v.mapping("recovery", raw.get("recovery"), set(RECOVERY_DEFAULTS))
    max_retries = v.integer("recovery.max_retries", recovery.get("max_retries", 2), low=0)
    timing = {k: float(v.number(f"recovery.{k}", recovery.get(k, RECOVERY_DEFAULTS[k]), low=0, low_ok=False))
              for k in ("heartbeat_interval", "grace_period", "database_timeout")}
    if timing["grace_period"] < 2 * timing["heartbeat_interval"]:
        v.fail("recovery.grace_period", f"must be at least twice heartbeat_interval ({timing['heartbeat_interval']:g}s), "
                                        f"or live trials would be taken for lost; got {timing['grace_period']:g}")
    checkpoints = v.mapping("checkpoints", raw.get("checkpoints"), {"store", "keep_best"})
    store = checkpoints.get("store")
    if store is not None:
        if not isinstance(store, str) or not store.strip():
            v.fail("checkpoints.store", f"must be a folder or s3://bucket/prefix, got {store!r}")
        if "://" not in store:
            store = os.path.abspath(os.path.join(base_dir or os.getcwd(), os.path.expanduser(store)))
        elif not store.startswith("s3://"):
            v.fail("checkpoints.store", f"only folders and s3://bucket/prefix are supported, got {store!r}")
    keep_best = v.integer("checkpoints.keep_best", checkpoints.get("keep_best", 3), low=0)

    parameters = v.parameters(raw.get("parameters"))
    if sampler["name"] == "grid":
        v.grid(parameters)

    return SweepConfig(
        study=study.strip(), parameters=parameters, dataset=dataset, metric=metric,
        direction=direction, epochs=epochs, seed=seed, sampler=sampler, pruner=pruner,
        n_trials=n_trials, timeout=timeout, parallel=parallel, cpus=float(cpus), gpus=float(gpus),
        max_retries=max_retries, heartbeat_interval=timing["heartbeat_interval"],
        grace_period=timing["grace_period"], database_timeout=timing["database_timeout"],
        checkpoint_store=store, keep_best=keep_best, deterministic=deterministic,
        steps_per_execution=steps_per_execution, backend=backend, gpu_hours=gpu_hours, **flags,
    )


class _Validator:
    """Checks one piece at a time and raises the first problem as one line."""

    def __init__(self, source: str, base_dir: str | None = None) -> None:
        self.base_dir = base_dir
        self.source = source

    def fail(self, key: str, message: str) -> None:
        where = f"{self.source}: {key}: " if key else f"{self.source}: "
        raise ConfigError(where + message)

    def unknown_keys(self, key: str, d: dict[str, Any], allowed: set[str]) -> None:
        for k in d:
            if k not in allowed:
                name = f"{key}.{k}" if key else str(k)
                self.fail(name, f"unknown key; allowed here: {', '.join(sorted(allowed))}")

    def mapping(self, key: str, raw: Any, allowed: set[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(key, f"must be a mapping with keys among {', '.join(sorted(allowed))}")
        self.unknown_keys(key, raw, allowed)
        return raw

    def integer(self, key: str, value: Any, *, low: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be a whole number, got {value!r}")
        if low is not None and value < low:
            self.fail(key, f"must be at least {low}, got {value}")
        return value

    def number(self, key: str, value: Any, *, low: float | None = None, low_ok: bool = True) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            self.fail(key, f"must be a number, got {value!r}")
        if low is not None and (value < low or (value == low and not low_ok)):
            self.fail(key, f"must be {'at least' if low_ok else 'greater than'} {low}, got {value}")
        return value

    def metric(self, raw: Any) -> tuple[str, str]:
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict):
            self.fail("metric", "must be a name or {name: val_accuracy, goal: maximize}")
        self.unknown_keys("metric", raw, {"name", "goal"})
        name = raw.get("name", "val_accuracy")
        if name not in METRICS:
            self.fail("metric.name", f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
        goal = raw.get("goal", METRICS[name])
        if goal not in ("maximize", "minimize"):
            self.fail("metric.goal", f"must be maximize or minimize, got {goal!r}")
        return name, goal

    def dataset(self, raw: Any, base_dir: str | None) -> DatasetConfig:
        if raw is None:
            self.fail("dataset", "missing; e.g. `dataset: digits` or `dataset: {name: folder, path: images/}`")
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict):
            self.fail("dataset", "must be a name or a mapping with name and path")
        self.unknown_keys("dataset", raw, {"name", "path", "image_size", "color", "val_fraction", "test_fraction",
                                           "flip", "on_corrupt", "max_images", "folds"})
        name = raw.get("name")
        if name not in DATASETS:
            self.fail("dataset.name", f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        path = raw.get("path")
        if name in ("npz", "folder"):
            if not isinstance(path, str) or not path:
                self.fail("dataset.path", f"dataset {name} needs a path")
            if base_dir and not os.path.isabs(path):
                path = os.path.normpath(os.path.join(base_dir, path))
        elif path is not None:
            self.fail("dataset.path", f"the built-in dataset {name} takes no path")
        size = raw.get("image_size")
        if size is not None:
            if (not isinstance(size, (list, tuple)) or len(size) != 2
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 4 for s in size)):
                self.fail("dataset.image_size", f"must be [height, width] of whole numbers >= 4, got {size!r}")
            size = (size[0], size[1])
        color = raw.get("color", "grayscale")
        if color not in ("grayscale", "rgb"):
            self.fail("dataset.color", f"must be grayscale or rgb, got {color!r}")
        val_fraction = self.number("dataset.val_fraction", raw.get("val_fraction", 0.2), low=0, low_ok=False)
        if val_fraction >= 1:
            self.fail("dataset.val_fraction", f"must be below 1, got {val_fraction}")
        test_fraction = self.number("dataset.test_fraction", raw.get("test_fraction", 0.1), low=0)
        if val_fraction + test_fraction >= 1:
            self.fail("dataset.test_fraction", f"val_fraction + test_fraction must stay below 1, got "
                                               f"{val_fraction} + {test_fraction}")
        flip = raw.get("flip", False)
        if not isinstance(flip, bool):
            self.fail("dataset.flip", f"must be true or false, got {flip!r}")
        if flip and name in ("digits", "mnist"):
            self.fail("dataset.flip", "digits change meaning when flipped; leave flip off for digits and mnist")
        on_corrupt = raw.get("on_corrupt", "fail")
        if on_corrupt not in ("fail", "skip"):
            self.fail("dataset.on_corrupt", f"must be fail or skip, got {on_corrupt!r}")
        max_images = raw.get("max_images")
        if max_images is not None:
            max_images = self.integer("dataset.max_images", max_images, low=20)
        folds = raw.get("folds")
        if folds is not None:
            folds = self.integer("dataset.folds", folds, low=2)
        return DatasetConfig(name, path, size, color, float(val_fraction), flip, float(test_fraction), on_corrupt,
                             max_images, folds)

    def component(self, key: str, raw: Any, options: dict[str, set[str]]) -> dict[str, Any]:
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict):
            self.fail(key, f"must be a name or a mapping with name; one of {', '.join(options)}")
        name = raw.get("name")
        if name not in options:
            self.fail(f"{key}.name", f"unknown {key} {name!r}; choose one of {', '.join(options)}")
        allowed = options[name] | {"name"} | ({"seed"} if key == "sampler" else set())
        self.unknown_keys(key, raw, allowed)
        out = dict(raw)
        for k, val in out.items():
            if k in ("name", "multivariate", "group", "constant_liar"):
                if k != "name" and not isinstance(val, bool):
                    self.fail(f"{key}.{k}", f"must be true or false, got {val!r}")
            elif k == "restart_strategy":
                if val not in ("ipop", "bipop", None):
                    self.fail(f"{key}.{k}", f"must be ipop or bipop, got {val!r}")
            elif k == "max_resource" and val == "auto":
                pass
            elif k != "seed":
                self.integer(f"{key}.{k}", val, low=0 if k != "reduction_factor" else 2)
        return out

    def parameters(self, raw: Any) -> dict[str, Param]:
        if not isinstance(raw, dict) or not raw:
            self.fail("parameters", "missing; name at least one, e.g. `learning_rate: {low: 1e-4, high: 1e-1, log: true}`")
        params: dict[str, Param] = {}
        for name, spec in raw.items():
            params[name] = self.param(str(name), spec)
        for p in params.values():
            for parent, allowed in p.when.items():
                key = f"parameters.{p.name}.when.{parent}"
                if parent not in params:
                    self.fail(key, f"the condition names {parent!r}, which is not in parameters; add it or remove the condition")
                if parent == p.name:
                    self.fail(key, "a parameter cannot depend on itself")
                parent_values = params[parent].values if params[parent].values is not None else (
                    [params[parent].value] if params[parent].fixed else None)
                if parent_values is None:
                    self.fail(key, f"{parent!r} is a range; a condition needs a fixed or categorical parent")
                for a in allowed:
                    if a not in parent_values:
                        self.fail(key, f"{a!r} is not among {parent}'s values {parent_values}")
        self.order(params)
        return params

    def param(self, name: str, spec: Any) -> Param:
        key = f"parameters.{name}"
        if name not in PARAMETER_DEFAULTS:
            self.fail(key, f"unknown parameter; known: {', '.join(PARAMETER_DEFAULTS)}")
        if not isinstance(spec, dict):
            spec = {"value": spec}
        self.unknown_keys(key, spec, {"value", "values", "low", "high", "log", "step", "when"})
        when = self._when(key, spec.get("when"))
        kinds = [k for k in ("value", "values", "low") if k in spec]
        if "high" in spec and "low" not in spec:
            self.fail(key, "a range needs both low and high")
        if len(kinds) != 1:
            self.fail(key, "give exactly one of value (fixed), values (a choice list) or low/high (a range)")
        if name == "weights":
            spec = self.weights(key, spec)
        if "value" in spec:
            self.check_value(key, name, spec["value"])
            return Param(name, value=spec["value"], when=when)
        if "values" in spec:
            values = spec["values"]
            if not isinstance(values, list) or not values:
                self.fail(f"{key}.values", "the choice list is empty; list at least one value")
            for val in values:
                self.check_value(f"{key}.values", name, val)
            if len(set(map(repr, values))) != len(values):
                self.fail(f"{key}.values", f"lists a value twice: {values}")
            return Param(name, values=list(values), when=when)
        if name in CHOICES:
            self.fail(key, f"{name} is categorical: use values: [{', '.join(CHOICES[name])}]")
        if name in BOOLEANS:
            self.fail(key, f"{name} is true or false: use values: [true, false] or value: true")
        low, high = spec.get("low"), spec.get("high")
        if "high" not in spec:
            self.fail(key, "a range needs both low and high")
        for bound, val in (("low", low), ("high", high)):
            self.number(f"{key}.{bound}", val)
            self.check_value(f"{key}.{bound}", name, val)
        log = spec.get("log", False)
        if not isinstance(log, bool):
            self.fail(f"{key}.log", f"must be true or false, got {log!r}")
        if low > high:
            self.fail(key, f"low ({low}) > high ({high}); make low <= high")
        if log and low <= 0:
            self.fail(key, f"log scale needs low > 0, got {low}; raise low (e.g. 1e-6)")
        step = spec.get("step")
        if step is not None:
            self.number(f"{key}.step", step, low=0, low_ok=False)
            if log:
                self.fail(f"{key}.step", "step and log cannot be combined; drop one")
        is_int = isinstance(PARAMETER_DEFAULTS[name], int)
        if is_int and not all(isinstance(x, int) for x in (low, high, step or 1)):
            self.fail(key, f"{name} takes whole numbers; give whole low, high and step")
        return Param(name, low=low, high=high, log=log, step=step, when=when)

    def weights(self, key: str, spec: dict[str, Any]) -> dict[str, Any]:
        """``weights`` takes none, imagenet or a file path; paths are made absolute from the YAML's folder.

        The file is checked when a YAML is read (not when a stored config is,
        which may be on a machine that only inspects the study).
        """
        if "value" not in spec and "values" not in spec:
            self.fail(key, "weights is categorical: use value: none | imagenet | path, or values: [...]")

        def one(value: Any) -> str:
            if not isinstance(value, str) or not value.strip():
                self.fail(key, f"weights must be none, imagenet or the path of a .weights.h5 file, got {value!r}")
            if value in WEIGHTS:
                return value
            path = os.path.expanduser(value)
            if self.base_dir is not None:
                path = os.path.normpath(os.path.join(self.base_dir, path))
                if not os.path.isfile(path):
                    self.fail(key, f"weights file {path} does not exist; give none, imagenet or an existing "
                                   ".weights.h5 file (sweeps export --format backbone writes one)")
            return path

        out = dict(spec)
        if "value" in spec:
            out["value"] = one(spec["value"])
        elif isinstance(spec["values"], list):
            out["values"] = [one(x) for x in spec["values"]]
        return out

    def _when(self, key: str, raw: Any) -> dict[str, list[Any]]:
        if raw is None:
            return {}
        if not isinstance(raw, dict) or not raw:
            self.fail(f"{key}.when", "must map a parent parameter to its value(s), e.g. {optimizer: sgd}")
        return {str(k): (list(v) if isinstance(v, list) else [v]) for k, v in raw.items()}

    def check_value(self, key: str, name: str, value: Any) -> None:
        default = PARAMETER_DEFAULTS[name]
        if name == "weights":
            return
        if name in BOOLEANS:
            if not isinstance(value, bool):
                self.fail(key, f"{name} must be true or false, got {value!r}")
            return
        if name in CHOICES:
            if value not in CHOICES[name]:
                self.fail(key, f"unknown {name} {value!r}; choose from {', '.join(CHOICES[name])}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"{name} must be a number, got {value!r}")
        if isinstance(default, int) and not isinstance(value, int):
            self.fail(key, f"{name} takes whole numbers, got {value!r}")
        lo, hi, lo_ok, hi_ok = PARAMETER_BOUNDS[name]
        if math.isnan(value) or value < lo or (value == lo and not lo_ok) or value > hi or (value == hi and not hi_ok):
            lo_s = f"{'>=' if lo_ok else '>'} {lo}"
            hi_s = "" if hi == math.inf else f" and {'<=' if hi_ok else '<'} {hi}"
            self.fail(key, f"{name} must be {lo_s}{hi_s}, got {value}")

    def order(self, params: dict[str, Param]) -> None:
        """Reject cycles among conditions (a needs b needs a)."""
        state: dict[str, int] = {}

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                self.fail(f"parameters.{name}.when", f"conditions form a cycle: {' -> '.join(trail + [name])}")
            state[name] = 1
            for parent in params[name].when:
                visit(parent, trail + [name])
            state[name] = 2

        for name in params:
            visit(name, [])

    def grid(self, params: dict[str, Param]) -> None:
        for p in params.values():
            if p.low is not None and p.step is None:
                self.fail(f"parameters.{p.name}", "the grid sampler needs discrete values: use values: [...] or add a step")
