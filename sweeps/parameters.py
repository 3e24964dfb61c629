"""The ``parameters:`` section: each hyperparameter fixed, categorical or a range, maybe under a condition.

``Param`` is one entry as the sweep holds it; ``Parameters`` checks the
section against the hyperparameter table (``workers/hyperparameters.py``):
names, kinds, bounds, conditions and their order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeps.builder import BUILT_IN_ONLY
from workers.hyperparameters import BOOL, BY_NAME, CHOICE, INT, WEIGHTS, WEIGHTS_KIND, Hyperparameter

if TYPE_CHECKING:
    from sweeps.validation import Checks

PARAM_KEYS = {"value", "values", "low", "high", "log", "step", "when"}


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
        if self.name in BY_NAME:
            return BY_NAME[self.name].kind == INT
        return all(isinstance(x, int) and not isinstance(x, bool) for x in (self.low, self.high, self.step or 1))

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


class Parameters:
    """Checks of the ``parameters:`` section, reported through the sections' ``Checks``."""

    def __init__(self, checks: Checks, own_model: bool = False) -> None:
        self.c = checks
        self.own_model = own_model      # names outside the table are the user's model's own parameters

    def all(self, raw: Any) -> dict[str, Param]:
        if not isinstance(raw, dict) or not raw:
            self.c.fail("parameters", "missing; name at least one, e.g. "
                                      "`learning_rate: {low: 1e-4, high: 1e-1, log: true}`")
        params = {str(name): self.one(str(name), spec) for name, spec in raw.items()}
        for p in params.values():
            self.conditions(p, params)
        self.order(params)
        return params

    def one(self, name: str, spec: Any) -> Param:
        """A parameter of the table, or with ``model:`` one of the user's model's own, whose kind comes from how
        it is declared (numbers in a range are whole when low, high and step are; choices are plain values)."""
        key = f"parameters.{name}"
        if self.own_model and name in BUILT_IN_ONLY:
            self.c.fail(key, f"{name} chooses a built-in model; with model: set, your function builds the model "
                             "(remove this parameter)")
        if name not in BY_NAME and not self.own_model:
            self.c.fail(key, f"unknown parameter; known: {', '.join(BY_NAME)} (or set model: to tune your own "
                             "model with its own parameters)")
        if name not in BY_NAME and not name.isidentifier():
            self.c.fail(key, "a parameter name must be letters, digits and _ (your function reads params[name])")
        if not isinstance(spec, dict):
            spec = {"value": spec}
        self.c.unknown_keys(key, spec, PARAM_KEYS)
        when = self._when(key, spec.get("when"))
        kinds = [k for k in ("value", "values", "low") if k in spec]
        if "high" in spec and "low" not in spec:
            self.c.fail(key, "a range needs both low and high")
        if len(kinds) != 1:
            self.c.fail(key, "give exactly one of value (fixed), values (a choice list) or low/high (a range)")
        if name in BY_NAME and BY_NAME[name].kind == WEIGHTS_KIND:
            spec = self.weights(key, spec)
        if "value" in spec:
            self.check_value(key, name, spec["value"])
            return Param(name, value=spec["value"], when=when)
        if "values" in spec:
            return Param(name, values=self._choices(key, name, spec["values"]), when=when)
        return self._range(key, name, spec, when)

    def configurations(self, key: str, raw: Any, params: dict[str, Param]) -> list[dict[str, Any]]:
        """Configurations to try (``seed_trials``, ``sweeps enqueue``): each value inside its parameter's space."""
        if not isinstance(raw, list) or not raw:
            self.c.fail(key, "must be a list of configurations, e.g. [{learning_rate: 3.0e-3, batch_size: 64}]")
        out = []
        for i, item in enumerate(raw):
            where = f"{key}[{i}]"
            if not isinstance(item, dict) or not item:
                self.c.fail(where, "must map parameter names to values, e.g. {learning_rate: 3.0e-3}")
            for name, value in item.items():
                if name not in params:
                    self.c.fail(f"{where}.{name}", f"not a parameter of this space; its parameters: {', '.join(params)}")
                problem = fits(params[name], value)
                if problem:
                    self.c.fail(f"{where}.{name}", problem)
                for parent, allowed in params[name].when.items():
                    if parent in item and item[parent] not in allowed:
                        self.c.fail(f"{where}.{name}", f"{name} exists only when {parent} is one of {allowed}")
            out.append(dict(item))
        return out

    def _choices(self, key: str, name: str, values: Any) -> list[Any]:
        if not isinstance(values, list) or not values:
            self.c.fail(f"{key}.values", "the choice list is empty; list at least one value")
        for val in values:
            self.check_value(f"{key}.values", name, val)
        if len(set(map(repr, values))) != len(values):
            self.c.fail(f"{key}.values", f"lists a value twice: {values}")
        return list(values)

    def _range(self, key: str, name: str, spec: dict[str, Any], when: dict[str, list[Any]]) -> Param:
        h = BY_NAME.get(name)          # None: the user's model's own parameter
        if h is not None and h.kind == CHOICE:
            self.c.fail(key, f"{name} is categorical: use values: [{', '.join(h.choices)}]")
        if h is not None and h.kind == BOOL:
            self.c.fail(key, f"{name} is true or false: use values: [true, false] or value: true")
        if "high" not in spec:
            self.c.fail(key, "a range needs both low and high")
        low, high = spec["low"], spec["high"]
        for bound, val in (("low", low), ("high", high)):
            self.c.number(f"{key}.{bound}", val)
            self.check_value(f"{key}.{bound}", name, val)
        log = spec.get("log", False)
        self.c.flag(f"{key}.log", log)
        if low > high:
            self.c.fail(key, f"low ({low}) > high ({high}); make low <= high")
        if log and low <= 0:
            self.c.fail(key, f"log scale needs low > 0, got {low}; raise low (e.g. 1e-6)")
        step = spec.get("step")
        if step is not None:
            self.c.number(f"{key}.step", step, low=0, low_ok=False)
            if log:
                self.c.fail(f"{key}.step", "step and log cannot be combined; drop one")
        if h is not None and h.kind == INT and not all(isinstance(x, int) for x in (low, high, step or 1)):
            self.c.fail(key, f"{name} takes whole numbers; give whole low, high and step")
        return Param(name, low=low, high=high, log=log, step=step, when=when)

    def weights(self, key: str, spec: dict[str, Any]) -> dict[str, Any]:
        """``weights`` takes none, imagenet or a file path; paths are made absolute from the YAML's folder.

        The file is checked when a YAML is read (not when a stored config is,
        which may be on a machine that only inspects the study).
        """
        if "value" not in spec and "values" not in spec:
            self.c.fail(key, "weights is categorical: use value: none | imagenet | path, or values: [...]")

        def one(value: Any) -> str:
            if not isinstance(value, str) or not value.strip():
                self.c.fail(key, f"weights must be none, imagenet or the path of a .weights.h5 file, got {value!r}")
            if value in WEIGHTS:
                return value
            path = os.path.expanduser(value)
            if self.c.base_dir is not None:
                path = os.path.normpath(os.path.join(self.c.base_dir, path))
                if not os.path.isfile(path):
                    self.c.fail(key, f"weights file {path} does not exist; give none, imagenet or an existing "
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
            self.c.fail(f"{key}.when", "must map a parent parameter to its value(s), e.g. {optimizer: sgd}")
        return {str(k): (list(v) if isinstance(v, list) else [v]) for k, v in raw.items()}

    def check_value(self, key: str, name: str, value: Any) -> None:
        """A value of the table's parameter ``name``; of a user's own parameter, any plain value."""
        if name not in BY_NAME:
            if value is not None and not isinstance(value, (bool, int, float, str)):
                self.c.fail(key, f"must be a number, a string, true/false or null, got {value!r}")
            return
        problem = value_error(BY_NAME[name], value)
        if problem:
            self.c.fail(key, problem)

    def conditions(self, p: Param, params: dict[str, Param]) -> None:
        for parent, allowed in p.when.items():
            key = f"parameters.{p.name}.when.{parent}"
            if parent not in params:
                self.c.fail(key, f"the condition names {parent!r}, which is not in parameters; add it or remove "
                                 "the condition")
            if parent == p.name:
                self.c.fail(key, "a parameter cannot depend on itself")
            parent_values = params[parent].values if params[parent].values is not None else (
                [params[parent].value] if params[parent].fixed else None)
            if parent_values is None:
                self.c.fail(key, f"{parent!r} is a range; a condition needs a fixed or categorical parent")
            for a in allowed:
                if a not in parent_values:
                    self.c.fail(key, f"{a!r} is not among {parent}'s values {parent_values}")

    def order(self, params: dict[str, Param]) -> None:
        """Reject cycles among conditions (a needs b needs a)."""
        state: dict[str, int] = {}

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                self.c.fail(f"parameters.{name}.when", f"conditions form a cycle: {' -> '.join(trail + [name])}")
            state[name] = 1
            for parent in params[name].when:
                visit(parent, trail + [name])
            state[name] = 2

        for name in params:
            visit(name, [])


def fits(p: Param, value: Any) -> str | None:
    """Why ``value`` lies outside parameter ``p``'s space (None when it lies inside)."""
    if p.fixed:
        return None if value == p.value else f"this space fixes {p.name} at {p.value!r}, got {value!r}"
    if p.values is not None:
        return None if value in p.values else f"{p.name} must be one of {p.values}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{p.name} must be a number, got {value!r}"
    if p.is_int and not float(value).is_integer():
        return f"{p.name} takes whole numbers, got {value!r}"
    assert p.low is not None and p.high is not None
    if not p.low <= value <= p.high:
        return f"{p.name} must lie in [{p.low}, {p.high}], got {value!r}"
    return None


def value_error(h: Hyperparameter, value: Any) -> str | None:
    """Why ``value`` cannot be hyperparameter ``h``'s (None when it can)."""
    if h.kind == WEIGHTS_KIND:
        return None
    if h.kind == BOOL:
        return None if isinstance(value, bool) else f"{h.name} must be true or false, got {value!r}"
    if h.kind == CHOICE:
        return None if value in h.choices else f"unknown {h.name} {value!r}; choose from {', '.join(h.choices)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{h.name} must be a number, got {value!r}"
    if h.kind == INT and not isinstance(value, int):
        return f"{h.name} takes whole numbers, got {value!r}"
    return h.bounds_error(value)
