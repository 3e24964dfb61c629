"""Sweep YAML (or a stored config) -> checked fields of ``SweepConfig``, one method per YAML section.

Each section method reads its part of the mapping and returns the
``SweepConfig`` fields it owns; the first problem anywhere is raised as one
``ConfigError`` line naming the source, the key and the fix. Parameters are
checked against the one hyperparameter table (``workers/hyperparameters.py``).
"""

from __future__ import annotations

import math
import os
from typing import Any, NoReturn

from sweeps.builder import model_section
from sweeps.errors import SweepsError
from sweeps.objectives import check_algorithms, constraints_section, objectives_section
from sweeps.parameters import Parameters
from workers.spec import METRICS

DATASETS = ("digits", "mnist", "npz", "folder")
BACKENDS = ("tensorflow", "jax")    # Keras backend of the trial workers
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
    "asha": {"min_resource", "reduction_factor", "min_early_stopping_rate", "pause"},
    "auto": {"reduction_factor", "threshold", "min_trials", "pause"},
    "hyperband": {"min_resource", "max_resource", "reduction_factor"},
    "none": set(),
}
AUDITED_PRUNERS = ("median", "successive_halving", "asha", "auto", "hyperband")   # take `audit`
RECOVERY_DEFAULTS: dict[str, float] = {
    "max_retries": 2,           # retries of one configuration after worker faults
    "heartbeat_interval": 10,   # seconds between heartbeats of each running trial
    "grace_period": 60,         # seconds without a heartbeat before a trial counts as lost
    "database_timeout": 300,    # seconds of database outage before the coordinator gives up
}
DATASET_KEYS = {"name", "path", "image_size", "color", "val_fraction", "test_fraction", "flip", "on_corrupt",
                "max_images", "folds"}


class ConfigError(SweepsError):
    """A sweep YAML (or stored config) that cannot run as written."""


class Checks:
    """Typed checks of single values; each raises the first problem as one line."""

    def __init__(self, source: str, base_dir: str | None = None) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, key: str, message: str) -> NoReturn:
        where = f"{self.source}: {key}: " if key else f"{self.source}: "
        raise ConfigError(where + message)

    def unknown_keys(self, key: str, d: dict[str, Any], allowed: set[str]) -> None:
        for k in d:
            if k not in allowed:
                self.fail(f"{key}.{k}" if key else str(k), f"unknown key; allowed here: {', '.join(sorted(allowed))}")

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

    def flag(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {value!r}")
        return value

    def one_of(self, key: str, value: Any, allowed: tuple[str | None, ...], message: str) -> Any:
        if value not in allowed:
            self.fail(key, message)
        return value


class Sections(Checks):
    """One method per YAML section; each returns the ``SweepConfig`` fields it owns."""

    TOP_LEVEL = ("study", "metric", "objectives", "constraints", "dataset", "epochs", "seed", "deterministic",
                 "mixed_precision", "jit_compile", "steps_per_execution", "backend", "sampler", "pruner", "budget",
                 "parallel", "resources", "recovery", "checkpoints", "tensorboard", "model", "parameters", "seed_trials",
                 "finalists")

    def all(self, raw: Any) -> dict[str, Any]:
        """Every section in the order its problems are reported, then the checks across sections."""
        if not isinstance(raw, dict):
            self.fail("", "the file must be a mapping of keys such as study, dataset, parameters")
        self.unknown_keys("", raw, set(self.TOP_LEVEL))
        fields: dict[str, Any] = {}
        for section in self.TOP_LEVEL:
            fields.update(getattr(self, section)(raw, fields))
        check_algorithms(self, [(fields["metric"], fields["direction"]), *fields["objectives"]],
                         fields["sampler"]["name"], fields["pruner"]["name"])
        return fields

    def study(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        study = raw.get("study")
        if not isinstance(study, str) or not study.strip():
            self.fail("study", "needs a name, e.g. `study: digits-demo`")
        return {"study": study.strip()}

    def metric(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        metric = raw.get("metric", "val_accuracy")
        if isinstance(metric, str):
            metric = {"name": metric}
        if not isinstance(metric, dict):
            self.fail("metric", "must be a name or {name: val_accuracy, goal: maximize}")
        self.unknown_keys("metric", metric, {"name", "goal"})
        name = metric.get("name", "val_accuracy")
        if name not in METRICS:
            self.fail("metric.name", f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
        goal = metric.get("goal", METRICS[name])
        self.one_of("metric.goal", goal, ("maximize", "minimize"), f"must be maximize or minimize, got {goal!r}")
        return {"metric": name, "direction": goal}

    def objectives(self, raw: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        """Several objectives: the first is the metric (it fills ``metric`` and ``direction``)."""
        if raw.get("objectives") is None:
            return {"objectives": ()}
        found = objectives_section(self, raw["objectives"], "metric" in raw, fields["metric"])
        return {"metric": found[0][0], "direction": found[0][1], "objectives": tuple(found[1:])}

    def constraints(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        return {"constraints": constraints_section(self, raw.get("constraints"))}

    def tensorboard(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        value = raw.get("tensorboard")
        if value is None or value is False:
            return {"tensorboard": value}
        if not isinstance(value, str) or not value.strip() or "://" in value:
            self.fail("tensorboard", f"must be a folder for the logs, or false to write none; got {value!r}")
        return {"tensorboard": os.path.abspath(os.path.join(self.base_dir or os.getcwd(), os.path.expanduser(value)))}

    def finalists(self, raw: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        value = raw.get("finalists", {"count": 3, "seeds": 2})
        if isinstance(value, int) and not isinstance(value, bool):
            value = {"count": value}
        if not isinstance(value, dict):
            self.fail("finalists", f"must be a number of configurations or {{count: 3, seeds: 2}}, got {value!r}")
        self.unknown_keys("finalists", value, {"count", "seeds", "ensemble"})
        count = self.integer("finalists.count", value.get("count", 3), low=0)
        given = value.get("ensemble", False)
        ensemble = ("winner" if given else "") if isinstance(given, bool) else given
        if not isinstance(given, bool) and given not in ("winner", "finalists"):
            self.fail("finalists.ensemble", "must be winner (or true: the winning configuration's runs averaged), "
                      f"finalists (every finalist's runs averaged) or false, got {value.get('ensemble')!r}")
        if ensemble and count == 0:
            self.fail("finalists.ensemble", "needs finalists (count > 0): it averages the finalists' runs")
        if ensemble and (fields.get("objectives") or fields.get("constraints")):
            self.fail("finalists.ensemble", "an ensemble of n runs has n times the size and latency that objectives "
                      "and constraints measure on one model; drop ensemble, or the objectives and constraints")
        return {"finalists": count, "finalist_seeds": self.integer("finalists.seeds", value.get("seeds", 2), low=1),
                "finalist_ensemble": ensemble}

    def seed_trials(self, raw: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        trials = raw.get("seed_trials")
        if trials is None:
            return {"seed_trials": ()}
        return {"seed_trials": tuple(Parameters(self).configurations("seed_trials", trials, fields["parameters"]))}

    def model(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        return {"model": model_section(self, raw.get("model"))}

    def dataset(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        """The ``DatasetConfig`` fields, as a mapping under ``dataset``."""
        d = raw.get("dataset")
        if d is None:
            self.fail("dataset", "missing; e.g. `dataset: digits` or `dataset: {name: folder, path: images/}`")
        if isinstance(d, str):
            d = {"name": d}
        if not isinstance(d, dict):
            self.fail("dataset", "must be a name or a mapping with name and path")
        self.unknown_keys("dataset", d, DATASET_KEYS)
        name = d.get("name")
        self.one_of("dataset.name", name, DATASETS, f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        path = self._dataset_path(str(name), d.get("path"))
        size = self._image_size(d.get("image_size"))
        color = d.get("color", "grayscale")
        self.one_of("dataset.color", color, ("grayscale", "rgb"), f"must be grayscale or rgb, got {color!r}")
        val_fraction, test_fraction = self._fractions(d)
        flip = self.flag("dataset.flip", d.get("flip", False))
        if flip and name in ("digits", "mnist"):
            self.fail("dataset.flip", "digits change meaning when flipped; leave flip off for digits and mnist")
        on_corrupt = d.get("on_corrupt", "fail")
        self.one_of("dataset.on_corrupt", on_corrupt, ("fail", "skip"), f"must be fail or skip, got {on_corrupt!r}")
        max_images, folds = d.get("max_images"), d.get("folds")
        if max_images is not None:
            max_images = self.integer("dataset.max_images", max_images, low=20)
        if folds is not None:
            folds = self.integer("dataset.folds", folds, low=2)
        return {"dataset": {"name": name, "path": path, "image_size": size, "color": color,
                            "val_fraction": val_fraction, "flip": flip, "test_fraction": test_fraction,
                            "on_corrupt": on_corrupt, "max_images": max_images, "folds": folds}}

    def _dataset_path(self, name: str, path: Any) -> str | None:
        if name in ("npz", "folder"):
            if not isinstance(path, str) or not path:
                self.fail("dataset.path", f"dataset {name} needs a path")
            if self.base_dir and not os.path.isabs(path):
                path = os.path.normpath(os.path.join(self.base_dir, path))
        elif path is not None:
            self.fail("dataset.path", f"the built-in dataset {name} takes no path")
        return path

    def _image_size(self, size: Any) -> tuple[int, int] | None:
        if size is None:
            return None
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 4 for s in size)):
            self.fail("dataset.image_size", f"must be [height, width] of whole numbers >= 4, got {size!r}")
        return (size[0], size[1])

    def _fractions(self, d: dict[str, Any]) -> tuple[float, float]:
        val_fraction = self.number("dataset.val_fraction", d.get("val_fraction", 0.2), low=0, low_ok=False)
        if val_fraction >= 1:
            self.fail("dataset.val_fraction", f"must be below 1, got {val_fraction}")
        test_fraction = self.number("dataset.test_fraction", d.get("test_fraction", 0.1), low=0)
        if val_fraction + test_fraction >= 1:
            self.fail("dataset.test_fraction", f"val_fraction + test_fraction must stay below 1, got "
                                               f"{val_fraction} + {test_fraction}")
        return float(val_fraction), float(test_fraction)

    def epochs(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        return {"epochs": self.integer("epochs", raw.get("epochs", 10), low=1)}

    def seed(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        return {"seed": self.integer("seed", raw.get("seed", 0), low=0)}

    def deterministic(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        return {"deterministic": self.flag("deterministic", raw.get("deterministic", False))}

    def mixed_precision(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        return {"mixed_precision": self.flag("mixed_precision", raw.get("mixed_precision", False))}

    def jit_compile(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        return {"jit_compile": self.flag("jit_compile", raw.get("jit_compile", False))}

    def steps_per_execution(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        return {"steps_per_execution": self.integer("steps_per_execution", raw.get("steps_per_execution", 1), low=1)}

    def backend(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        backend = raw.get("backend", "tensorflow")
        self.one_of("backend", backend, BACKENDS, f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
        return {"backend": backend}

    def sampler(self, raw: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        sampler = self._component("sampler", raw.get("sampler", "tpe"), SAMPLER_OPTIONS)
        sampler.setdefault("seed", fields["seed"])
        sampler["seed"] = self.integer("sampler.seed", sampler["seed"], low=0)
        return {"sampler": sampler}

    def pruner(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        return {"pruner": self._component("pruner", raw.get("pruner", "median"), PRUNER_OPTIONS)}

    def _component(self, key: str, raw: Any, options: dict[str, set[str]]) -> dict[str, Any]:
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict):
            self.fail(key, f"must be a name or a mapping with name; one of {', '.join(options)}")
        name = raw.get("name")
        if name not in options:
            self.fail(f"{key}.name", f"unknown {key} {name!r}; choose one of {', '.join(options)}")
        extra = {"seed"} if key == "sampler" else {"audit"} if name in AUDITED_PRUNERS else set()
        self.unknown_keys(key, raw, options[name] | {"name"} | extra)
        for k, val in raw.items():
            if k in ("multivariate", "group", "constant_liar", "pause"):
                self.flag(f"{key}.{k}", val)
            elif k in ("audit", "threshold"):
                share = self.number(f"{key}.{k}", val, low=0 if k == "audit" else -1)
                if share > 1 or (k == "audit" and share >= 1):
                    self.fail(f"{key}.{k}", f"must be {'below 1 (a share of the trials)' if k == 'audit' else 'at most 1'}"
                                            f", got {val!r}")
            elif k == "restart_strategy":
                self.one_of(f"{key}.{k}", val, ("ipop", "bipop", None), f"must be ipop or bipop, got {val!r}")
            elif k not in ("name", "seed") and not (k == "max_resource" and val == "auto"):
                self.integer(f"{key}.{k}", val, low=0 if k != "reduction_factor" else 2)
        return dict(raw)

    def budget(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        budget = raw.get("budget", {}) or {}
        if not isinstance(budget, dict):
            self.fail("budget", "must be a mapping such as {n_trials: 20, timeout: 3600}")
        self.unknown_keys("budget", budget, {"n_trials", "timeout", "gpu_hours", "max_failed_trials"})
        timeout, gpu_hours, failed = budget.get("timeout"), budget.get("gpu_hours"), budget.get("max_failed_trials")
        return {"n_trials": self.integer("budget.n_trials", budget.get("n_trials", 20), low=1),
                "timeout": None if timeout is None else self.number("budget.timeout", timeout, low=0, low_ok=False),
                "gpu_hours": None if gpu_hours is None else float(
                    self.number("budget.gpu_hours", gpu_hours, low=0, low_ok=False)),
                "max_failed_trials": None if failed is None else self.integer("budget.max_failed_trials", failed,
                                                                              low=1)}

    def parallel(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        return {"parallel": self.integer("parallel", raw.get("parallel", 1), low=1)}

    def resources(self, raw: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        resources = raw.get("resources", {}) or {}
        if not isinstance(resources, dict):
            self.fail("resources", "must be a mapping such as {cpus: 1, gpus: 0.25}")
        self.unknown_keys("resources", resources, {"cpus", "gpus"})
        cpus = self.number("resources.cpus", resources.get("cpus", 1), low=0)
        gpus = self.number("resources.gpus", resources.get("gpus", 0), low=0)
        if fields["gpu_hours"] is not None and gpus == 0:
            self.fail("budget.gpu_hours", "counts GPU time, but resources.gpus is 0; set resources.gpus (e.g. 0.25) "
                                          "or use budget.timeout")
        return {"cpus": float(cpus), "gpus": float(gpus)}

    def recovery(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        recovery = self.mapping("recovery", raw.get("recovery"), {*RECOVERY_DEFAULTS, "stall_timeout"})
        out: dict[str, Any] = {"max_retries": self.integer("recovery.max_retries", recovery.get("max_retries", 2),
                                                           low=0)}
        for k in ("heartbeat_interval", "grace_period", "database_timeout"):
            out[k] = float(self.number(f"recovery.{k}", recovery.get(k, RECOVERY_DEFAULTS[k]), low=0, low_ok=False))
        if out["grace_period"] < 2 * out["heartbeat_interval"]:
            self.fail("recovery.grace_period", f"must be at least twice heartbeat_interval "
                                               f"({out['heartbeat_interval']:g}s), or live trials would be taken "
                                               f"for lost; got {out['grace_period']:g}")
        stall = recovery.get("stall_timeout")
        out["stall_timeout"] = None if stall is None else float(self.number("recovery.stall_timeout", stall, low=0,
                                                                            low_ok=False))
        return out

    def checkpoints(self, raw: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
        checkpoints = self.mapping("checkpoints", raw.get("checkpoints"), {"store", "keep_best"})
        store = checkpoints.get("store")
        if store is not None:
            if not isinstance(store, str) or not store.strip():
                self.fail("checkpoints.store", f"must be a folder or s3://bucket/prefix, got {store!r}")
            if "://" not in store:
                store = os.path.abspath(os.path.join(self.base_dir or os.getcwd(), os.path.expanduser(store)))
            elif not store.startswith("s3://"):
                self.fail("checkpoints.store", f"only folders and s3://bucket/prefix are supported, got {store!r}")
        return {"checkpoint_store": store,
                "keep_best": self.integer("checkpoints.keep_best", checkpoints.get("keep_best", 3), low=0)}

    def parameters(self, raw: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        params = Parameters(self, own_model=fields["model"] is not None).all(raw.get("parameters"))
        if fields["sampler"]["name"] == "grid":
            for p in params.values():
                if p.low is not None and p.step is None:
                    self.fail(f"parameters.{p.name}", "the grid sampler needs discrete values: use values: [...] "
                                                      "or add a step")
        return {"parameters": params}
