"""`sweeps report`'s own pictures on studies made without training: synthetic trials (complete, pruned, paused and
continued, audited, a finalist, failed), rungs and a held-out test accuracy, at 10 and at 100 trials.

Set SWEEPS_KEEP_PLOTS=1 to keep the PNGs under test-artifacts/report-plots/ and look at them.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from sweeps import plots
from sweeps import study as schema
from sweeps.config import from_dict
from sweeps.report import write_report
from tests.helpers import TINY_SPACE, keep_artifact

EPOCHS = 20
RUNGS = {"mode": "auto", "rungs": [4, 12], "trials": 8, "threshold": 0.8,
         "correlation": {"2": 0.41, "3": 0.71, "4": 0.85, "5": 0.88}}
T0 = datetime.datetime(2025, 1, 1, 9, 0, 0)


def _curve(rng: random.Random, quality: float, epochs: range) -> dict[int, float]:
    """A learning curve rising from chance (0.1) to ``quality``; the first epochs of some trials stay at chance."""
    stuck = rng.choice([0, 0, 0, 1, 2])
    return {e: 0.1 + rng.uniform(0, 0.01) if e <= stuck else
            min(1.0, quality - (quality - 0.1) * math.exp(-(e - stuck) / rng.uniform(2, 5)) + rng.gauss(0, 0.008))
            for e in epochs}


SPACE = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
         "optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd"])}


def _add(study: optuna.Study, state: TrialState, values: dict[int, float], start: float, minutes_per_epoch: float,
         value: float | list[float] | None = None, params: dict[str, Any] | None = None, **attrs: Any) -> int:
    told = None if value is None else value if isinstance(value, list) else [value]
    trial = optuna.trial.create_trial(state=state, intermediate_values=values, user_attrs=attrs, params=params or {},
                                      distributions={k: SPACE[k] for k in params or {}}, values=told)
    trial.datetime_start = T0 + datetime.timedelta(minutes=start)
    trial.datetime_complete = trial.datetime_start + datetime.timedelta(minutes=minutes_per_epoch * len(values))
    study.add_trial(trial)
    return len(study.get_trials(deepcopy=False)) - 1


def make_study(url: str, name: str, n: int, *, objectives: int = 1, rungs: bool = True,
               tested: bool = True, seed: int = 0) -> optuna.Study:
    """A sweeps study of ``n`` synthetic trials (val_accuracy, 20 epochs, rungs at 4 and 12) as the coordinator
    would leave it: most below the rung's best third pruned there, one paused and continued, one paused twice,
    some audited, one finalist retraining, one failed; the held-out test accuracy of the best set when ``tested``."""
    raw: dict[str, Any] = {**TINY_SPACE, "study": name, "epochs": EPOCHS, "pruner": {"name": "none"}}
    if objectives > 1:
        raw["objectives"] = [{"name": "val_accuracy", "goal": "maximize"}, {"name": "param_count", "goal": "minimize"}]
    study = schema.create(from_dict(raw, source="test"), url, {"name": "digits", "class_names": list("0123456789")})
    rng = random.Random(seed)
    full = range(1, EPOCHS + 1)

    def final(values: dict[int, float], width: int) -> float | list[float]:
        best = max(values.values())
        return [best, float(width * 1000)] if objectives > 1 else best

    at_rung: dict[int, list[float]] = {4: [], 12: []}
    for i in range(n - 7):
        rate = 10 ** rng.uniform(-4, -1)
        params: dict[str, Any] = {"learning_rate": rate, "optimizer": rng.choice(["adam", "sgd"])}
        quality = 0.97 - 0.12 * abs(math.log10(rate) + 2.5) - rng.uniform(0, 0.15)
        values = _curve(rng, quality, full)
        start = i * 6 / 2 + rng.uniform(0, 1)            # two slots, about 6 minutes a trial
        stop = next((r for r in (4, 12) if len(at_rung[r]) >= 3 and values[r] < sorted(at_rung[r])[-len(at_rung[r]) // 3]),
                    None) if i >= 3 else None
        for r in (4, 12):
            at_rung[r].append(values[r])
        if stop is not None:
            _add(study, TrialState.PRUNED, {e: v for e, v in values.items() if e <= stop}, start, 0.3, None, params,
                 reason=f"pruned at rung {stop}")
        elif i % 7 == 3:     # the pruner would have stopped it at 4: it ran on as an audit
            _add(study, TrialState.COMPLETE, values, start, 0.3, final(values, rng.randint(1, 9)), params, audited=4)
        else:
            _add(study, TrialState.COMPLETE, values, start, 0.3, final(values, rng.randint(1, 9)), params)
    late = (n - 7) * 3.0
    values, params = _curve(rng, 0.93, full), {"learning_rate": 0.003, "optimizer": "adam"}
    paused = _add(study, TrialState.PRUNED, {e: v for e, v in values.items() if e <= 4}, late, 0.3, None, params,
                  paused_at=4, reason="paused at rung 4")
    _add(study, TrialState.COMPLETE, {e: v for e, v in values.items() if e >= 4}, late + 5, 0.3, final(values, 3),
         params, continues=paused, config_id=paused)
    values, params = _curve(rng, 0.9, full), {"learning_rate": 0.01, "optimizer": "sgd"}      # paused twice
    first = _add(study, TrialState.PRUNED, {e: v for e, v in values.items() if e <= 4}, late + 1, 0.3, None, params,
                 paused_at=4)
    second = _add(study, TrialState.PRUNED, {e: v for e, v in values.items() if 4 <= e <= 12}, late + 3, 0.3, None,
                  params, paused_at=12, continues=first, config_id=first)
    _add(study, TrialState.COMPLETE, {e: v for e, v in values.items() if e >= 12}, late + 7, 0.3, final(values, 4),
         params, continues=second, config_id=first)
    best = schema.best_trial(study)
    assert best is not None
    again = {e: v + rng.gauss(0, 0.005) for e, v in best.intermediate_values.items()}
    _add(study, TrialState.COMPLETE, again, late + 8, 0.3, final(again, 3), best.params, finalist_of=best.number)
    _add(study, TrialState.FAIL, dict(list(_curve(rng, 0.8, full).items())[:3]), late + 9, 0.3, reason="worker lost")
    if rungs:
        study.set_user_attr(schema.RUNGS_ATTR, RUNGS)
    if tested:
        best = schema.best_trial(study)
        assert best is not None
        study.set_user_attr(schema.TEST_ATTR, {"trial": best.number, "test_accuracy": best.values[0] - 0.012,
                                               "macro_f1": 0.9, "n_test": 180, "at": "2025-01-01T12:00:00+00:00"})
    return study


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('studies') / 's.db'}"


@pytest.fixture(scope="module", params=[10, 100], ids=["10-trials", "100-trials"])
def synthetic(request: pytest.FixtureRequest, storage: str) -> optuna.Study:
    return make_study(storage, f"synthetic-{request.param}", request.param, seed=request.param)


def _kept(folder: Path, name: str) -> None:
    if os.environ.get("SWEEPS_KEEP_PLOTS"):
        target = keep_artifact("report-plots") / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(folder, target)


def _trial_lines(ax: Any) -> list[Any]:
    return [line for line in ax.lines if str(line.get_gid() or "").startswith("trial ")]


def test_learning_curves_draw_every_trial_without_a_legend_per_trial(synthetic: optuna.Study) -> None:
    fig = plots.learning_curves_figure(synthetic)
    try:
        ax = fig.axes[0]
        with_values = [t for t in synthetic.get_trials() if t.intermediate_values]
        assert sorted(int(line.get_gid().split()[1]) for line in _trial_lines(ax)) == [t.number for t in with_values]
        legend = ax.get_legend()
        assert legend is not None and len(legend.get_texts()) <= 6
        assert {t.get_text() for t in legend.get_texts()} >= {"pruned, failed or running", "rung"}
        assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "val_accuracy of the complete trial"   # colorbar
        rungs = [line for line in ax.lines if line.get_gid() == "rung"]
        assert sorted(line.get_xdata()[0] for line in rungs) == [4, 12]
        assert any("rung 4" in t.get_text() and "0.85" in t.get_text() for t in ax.texts)
        # Pruned and failed trials are thin grey; complete ones coloured; the paused one dashed.
        by_number = {t.number: t for t in with_values}
        for line in _trial_lines(ax):
            t = by_number[int(line.get_gid().split()[1])]
            if t.state in (TrialState.PRUNED, TrialState.FAIL) and schema.PAUSED_AT not in t.user_attrs:
                assert line.get_color() == plots.GREY and line.get_alpha() < 0.6 and line.get_linewidth() < 1
            elif schema.PAUSED_AT in t.user_attrs:
                assert line.get_linestyle() == "--" and line.get_color() != plots.GREY   # coloured: it was continued
            else:
                assert line.get_color() != plots.GREY
        # Each continuation starts at its paused trial's rung point; the audited trials are marked at their epoch.
        paused = sorted(by_number[t.user_attrs[schema.CONTINUES]] for t in with_values if schema.CONTINUES in t.user_attrs)
        joins = sorted((line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines if line.get_gid() == "join")
        assert len(paused) == 3 and joins == sorted((t.user_attrs[schema.PAUSED_AT],
                                                     t.intermediate_values[t.user_attrs[schema.PAUSED_AT]]) for t in paused)
        assert [line.get_xdata()[0] for line in ax.lines if line.get_gid() == "audited"] == \
            [4] * sum(schema.AUDITED in t.user_attrs for t in with_values)
        # The y range keeps every final value in view, and leaves out only the worst 2% of values.
        low, high = ax.get_ylim()
        finals = [t.values[0] for t in with_values if t.state == TrialState.COMPLETE]
        every = sorted(v for t in with_values for v in t.intermediate_values.values())
        assert low <= min(finals) and high >= every[-1] and sum(v < low for v in every) <= 0.02 * len(every)
    finally:
        plots.save_png(fig, os.devnull)


def test_best_so_far_ends_at_the_best_value_and_shows_the_test_accuracy(synthetic: optuna.Study) -> None:
    fig = plots.best_over_time_figure(synthetic)
    try:
        ax = fig.axes[0]
        best = schema.best_trial(synthetic)
        assert best is not None
        (line,) = [line for line in ax.lines if line.get_gid() == "best so far"]
        ys = list(line.get_ydata())
        assert ys[-1] == schema.first_value(best) and ys == sorted(ys)          # it only ever goes up
        (dots,) = [line for line in ax.lines if line.get_gid() == "trials"]
        complete = synthetic.get_trials(states=(TrialState.COMPLETE,))
        assert len(dots.get_xdata()) == len(complete) and min(dots.get_xdata()) >= 0
        first = min(t.datetime_start for t in synthetic.get_trials() if t.datetime_start)
        last = max(t.datetime_complete for t in complete if t.datetime_complete)
        assert line.get_xdata()[-1] == pytest.approx((last - first).total_seconds() / 60)
        (test,) = [line for line in ax.lines if line.get_gid() == "test accuracy"]
        tested = synthetic.user_attrs[schema.TEST_ATTR]
        assert test.get_ydata()[0] == tested["test_accuracy"]
        assert f"test accuracy of trial {tested['trial']}" in test.get_label()
        assert ax.get_xlabel() == "minutes since the first trial started" and ax.get_ylabel() == "val_accuracy"
        low, high = ax.get_ylim()
        assert low < tested["test_accuracy"] < high and low < ys[-1] < high
    finally:
        plots.save_png(fig, os.devnull)


def test_the_y_range_leaves_out_the_worst_two_percent_only() -> None:
    values = [0.6 + 0.003 * i for i in range(98)] + [0.1, 0.1]        # two chance-level epochs among a hundred
    low, high = plots.clipped_range(values, maximize=True) or (0, 0)
    assert 0.1 < low < 0.6 and high > max(values)
    low, high = plots.clipped_range(values[-40:], maximize=True) or (0, 0)      # fewer than 50: nothing left out
    assert low < 0.1
    low, high = plots.clipped_range([-v for v in values], maximize=False, also=[-0.05]) or (0, 0)   # a loss
    assert high > -0.05 and low < -max(values)
    assert plots.clipped_range([float("nan")], maximize=True) is None


def test_report_writes_our_pictures_and_optunas(synthetic: optuna.Study, storage: str, tmp_path: Path) -> None:
    r = write_report(synthetic.study_name, storage, str(tmp_path))
    _kept(tmp_path, synthetic.study_name)
    assert set(r["images"]) == {"optimization_history", "intermediate_values", "param_importances",
                                "parallel_coordinate"}, r["skipped"]
    for path in r["images"].values():
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, path
    page = Path(r["html"]).read_text()
    tested = synthetic.user_attrs[schema.TEST_ATTR]
    assert "Learning curves" in page and "Best value so far against wall-clock time" in page
    assert f"Held-out test split: trial {tested['trial']}'s model, accuracy {tested['test_accuracy']:.4f}" in page
    json.dumps(r)


def test_a_study_without_rungs_or_test_accuracy_draws_neither(storage: str, tmp_path: Path) -> None:
    study = make_study(storage, "bare", 0, rungs=False, tested=False)     # the paused pair, a finalist, a failure
    r = write_report("bare", storage, str(tmp_path))
    assert {"optimization_history", "intermediate_values"} <= set(r["images"]), r["skipped"]
    fig = plots.best_over_time_figure(study)
    try:
        assert not [line for line in fig.axes[0].lines if line.get_gid() == "test accuracy"]
    finally:
        plots.save_png(fig, os.devnull)
    fig = plots.learning_curves_figure(study)
    try:
        assert not [line for line in fig.axes[0].lines if line.get_gid() == "rung"]
        assert len(_trial_lines(fig.axes[0])) == 7
    finally:
        plots.save_png(fig, os.devnull)


def test_report_of_a_single_trial(storage: str, tmp_path: Path) -> None:
    raw: dict[str, Any] = {**TINY_SPACE, "study": "single", "epochs": 3, "pruner": {"name": "none"}}
    study = schema.create(from_dict(raw, source="test"), storage, {"name": "digits"})
    _add(study, TrialState.COMPLETE, {1: 0.5, 2: 0.7, 3: 0.8}, 0, 1.0, 0.8)
    r = write_report("single", storage, str(tmp_path))
    assert {"optimization_history", "intermediate_values"} <= set(r["images"]), r["skipped"]
    fig = plots.best_over_time_figure(study)
    try:
        (line,) = [line for line in fig.axes[0].lines if line.get_gid() == "best so far"]
        assert list(line.get_ydata()) == [0.8, 0.8]
    finally:
        plots.save_png(fig, os.devnull)


def test_report_with_several_objectives_follows_the_first(storage: str, tmp_path: Path) -> None:
    study = make_study(storage, "pareto", 30, objectives=2, seed=3)
    r = write_report("pareto", storage, str(tmp_path))
    _kept(tmp_path, "pareto")
    assert {"optimization_history", "intermediate_values", "pareto_front"} <= set(r["images"]), r["skipped"]
    fig = plots.best_over_time_figure(study)
    try:
        (line,) = [line for line in fig.axes[0].lines if line.get_gid() == "best so far"]
        best = schema.best_trial(study)
        assert best is not None and line.get_ydata()[-1] == best.values[0]
    finally:
        plots.save_png(fig, os.devnull)


def test_a_minimised_metric_keeps_the_test_accuracy_on_its_own_axis(storage: str) -> None:
    raw: dict[str, Any] = {**TINY_SPACE, "study": "loss", "epochs": 3, "metric": {"name": "val_loss", "goal": "minimize"},
                           "pruner": {"name": "none"}}
    study = schema.create(from_dict(raw, source="test"), storage, {"name": "digits"})
    for i, final in enumerate([0.9, 0.4, 0.6, 0.3, 2.5]):
        _add(study, TrialState.COMPLETE, {1: final + 1.0, 2: final + 0.3, 3: final}, i * 2, 1.0, final)
    study.set_user_attr(schema.TEST_ATTR, {"trial": 3, "test_accuracy": 0.91})
    fig = plots.best_over_time_figure(study)
    try:
        ax, twin = fig.axes
        (line,) = [line for line in ax.lines if line.get_gid() == "best so far"]
        assert line.get_ydata()[-1] == 0.3 and list(line.get_ydata()) == sorted(line.get_ydata(), reverse=True)
        assert [line.get_ydata()[0] for line in twin.lines if line.get_gid() == "test accuracy"] == [0.91]
        assert ax.get_ylim()[1] > 2.5        # five values: none is left out of the frame
    finally:
        plots.save_png(fig, os.devnull)
    fig = plots.learning_curves_figure(study)
    try:
        assert fig.axes[0].get_ylim()[0] < 0.3
    finally:
        plots.save_png(fig, os.devnull)


class _Predicts:
    """A stand-in for a Keras model: right on every image but the first."""

    def __init__(self, labels: Any) -> None:
        import numpy as np

        self.probabilities = np.eye(3)[labels]
        self.probabilities[0] = np.roll(self.probabilities[0], 1)

    def predict(self, x: Any, batch_size: int = 0, verbose: int = 0) -> Any:
        return self.probabilities[: len(x)]


def _trained(study: Any, trial: optuna.trial.FrozenTrial) -> Any:
    import numpy as np

    from sweeps.trained import Trained
    from workers.data import Arrays

    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    x = np.zeros((10, 4, 4, 1), dtype="float32")
    data = Arrays(x, labels, x, labels, ("a", "b", "c"), x_test=x, y_test=labels)
    return Trained(study, from_dict({**TINY_SPACE, "study": "evaluated"}, source="test"), trial, data,
                   _Predicts(labels), "checkpoint")


def test_best_evaluate_stores_its_answer_for_the_report(storage: str, tmp_path: Path) -> None:
    from sweeps.trained import evaluate

    study = make_study(storage, "evaluated", 10, tested=False, seed=5)
    best = schema.best_trial(study)
    assert best is not None
    found = evaluate(_trained(study, best))
    stored = optuna.load_study(study_name="evaluated", storage=storage).user_attrs[schema.TEST_ATTR]
    assert stored["trial"] == best.number and stored["test_accuracy"] == found["accuracy"] == 0.9
    assert stored["n_test"] == 10 and stored["macro_f1"] == found["macro_f1"]
    assert datetime.datetime.fromisoformat(stored["at"]).tzinfo is not None
    fig = plots.best_over_time_figure(study)
    try:
        assert [line.get_ydata()[0] for line in fig.axes[0].lines if line.get_gid() == "test accuracy"] == [0.9]
    finally:
        plots.save_png(fig, os.devnull)

    class Unwritable:            # a database gone read-only: the answer still comes back
        study_name = "evaluated"

        def set_user_attr(self, key: str, value: Any) -> None:
            raise RuntimeError("attempt to write a readonly database")

    assert evaluate(_trained(Unwritable(), best))["accuracy"] == 0.9
