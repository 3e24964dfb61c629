"""PNG images made in the control plane (matplotlib, no TensorFlow): confusion matrices for the dashboard and
reports, and the report's own pictures of the search (learning curves, the best value against wall-clock time)
where Optuna's defaults do not read at a hundred trials."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps import study as schema


def confusion_matrix_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str,
                         title: str = "confusion matrix") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix)
    n = len(m)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * n), dpi=100)
    try:
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(n), [str(c) for c in class_names][:n], rotation=90 if n > 12 else 0)
        ax.set_yticks(range(n), [str(c) for c in class_names][:n])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        high = m.max() / 2 if m.size else 0
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > high else "black")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


# -- the report's own figures: learning curves and the best value against wall-clock time ------------------------

GREY = "0.55"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def clipped_range(values: Sequence[float], maximize: bool, also: Sequence[float] = ()) -> tuple[float, float] | None:
    """A y range that shows where the search is: the worst 2% of values (chance-level epochs, a diverged trial)
    are left below (above, when minimising) the frame so they do not squash the rest (none of fewer than 50);
    ``also`` is always in view."""
    v = sorted(x for x in values if math.isfinite(x))
    if not v:
        return None
    cut = len(v) // 50
    lo, hi = (v[cut], v[-1]) if maximize else (v[0], v[-1 - cut])
    extra = [x for x in also if math.isfinite(x)]
    lo, hi = min([lo, *extra]), max([hi, *extra])
    pad = (hi - lo) * 0.06 or max(abs(hi) * 0.05, 0.01)
    return lo - pad, hi + pad


def _curve(trial: FrozenTrial) -> tuple[list[int], list[float]]:
    points = sorted((int(e), float(v)) for e, v in trial.intermediate_values.items() if math.isfinite(v))
    return [e for e, _ in points], [v for _, v in points]


def learning_curves_figure(study: optuna.Study) -> Any:
    """Every trial's metric per epoch (see _learning_curves), in matplotlib's default style."""
    with _pyplot().style.context("default"):       # Optuna's plots switch pyplot to ggplot for good
        return _learning_curves(study)


def _learning_curves(study: optuna.Study) -> Any:
    """Every trial's metric per epoch, readable at a hundred trials: no legend per trial; complete trials coloured
    by their final value, pruned ones thin grey, paused ones dashed, a continuation joined to its paused trial at
    the rung, audited trials marked where the pruner would have stopped them, and the rungs as dotted lines."""
    plt = _pyplot()
    from matplotlib import cm, colors
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    metric, maximize = schema.objective_names(study)[0], schema.maximize(study)
    trials = [t for t in study.get_trials(deepcopy=False) if _curve(t)[0]]
    by_number = {t.number: t for t in trials}
    finals = {t.number: v for t in trials if t.state == TrialState.COMPLETE and (v := schema.first_value(t)) is not None}
    low, high = (min(finals.values()), max(finals.values())) if finals else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.01, high + 0.01
    norm = colors.Normalize(low, high)
    cmap = plt.get_cmap("viridis" if maximize else "viridis_r")      # yellow is the best either way
    colour = {number: cmap(norm(v)) for number, v in finals.items()}
    child_of = {int(t.user_attrs[schema.CONTINUES]): t for t in trials if schema.CONTINUES in t.user_attrs}

    fig, ax = plt.subplots(figsize=(10, 5.6), dpi=100)
    faint = 0.55 if len(trials) <= 30 else 0.3          # pruned curves: visible at ten, background at a hundred
    seen: set[str] = set()
    every: list[float] = []
    # Worst first, so the best curves are drawn on top of the rest.
    order = sorted(trials, key=lambda t: (t.number in colour, (1 if maximize else -1) * (schema.first_value(t) or 0.0)))
    for t in order:
        epochs, values = _curve(t)
        every += values
        parent = by_number.get(int(t.user_attrs[schema.CONTINUES])) if schema.CONTINUES in t.user_attrs else None
        if parent is not None:
            before = [(e, v) for e, v in zip(*_curve(parent)) if e < epochs[0]]
            if before and epochs[0] not in parent.intermediate_values:
                epochs, values = [before[-1][0], *epochs], [before[-1][1], *values]   # join it at the rung
        style: dict[str, Any]
        if t.number in colour:
            style = {"color": colour[t.number], "lw": 1.3, "alpha": 0.9, "zorder": 3}
        elif t.state == TrialState.PRUNED and schema.PAUSED_AT in t.user_attrs:
            tint = _continued_colour(t.number, child_of, colour)
            style = {"color": tint, "lw": 1.1, "ls": "--", "alpha": 0.75, "zorder": 2}
            seen.add("paused")
        else:
            style = {"color": GREY, "lw": 0.7, "alpha": faint, "zorder": 1}
            seen.add("pruned")
        ax.plot(epochs, values, gid=f"trial {t.number}", **style)
        if parent is not None:
            ax.plot(epochs[:1], values[:1], "o", ms=4, color=style["color"], zorder=4, gid="join")
            seen.add("continued")
        audited = t.user_attrs.get(schema.AUDITED)
        if audited is not None and int(audited) in t.intermediate_values:
            ax.plot([int(audited)], [t.intermediate_values[int(audited)]], "x", ms=7, mew=1.8, color="crimson",
                    zorder=5, gid="audited")
            seen.add("audited")
    rungs = _draw_rungs(ax, study.user_attrs.get(schema.RUNGS_ATTR))
    if rungs:
        seen.add("rung")

    limits = clipped_range(every, maximize)
    if limits:
        ax.set_ylim(*limits)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    counts = schema.state_counts(list(trials))
    ax.set_title(f"Learning curves: {len(trials)} trials ({counts['COMPLETE']} complete, {counts['PRUNED']} pruned)"
                 + (f"; {rungs}" if rungs else ""), fontsize=11)
    ax.grid(alpha=0.25)
    if colour:
        bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.015)
        bar.set_label(f"{metric} of the complete trial")
    keys = {
        "pruned": Line2D([], [], color=GREY, lw=1, alpha=0.6, label="pruned, failed or running"),
        "paused": Line2D([], [], color=GREY, lw=1.1, ls="--", label="paused at a rung (coloured: continued later)"),
        "continued": Line2D([], [], color=GREY, marker="o", ms=4, lw=0, label="continued from its pause"),
        "audited": Line2D([], [], color="crimson", marker="x", ms=7, mew=1.8, lw=0,
                          label="audited: the pruner would have stopped it here"),
        "rung": Line2D([], [], color="0.25", lw=1, ls=":", label="rung"),
    }
    handles = [h for k, h in keys.items() if k in seen]
    if handles:
        ax.legend(handles=handles, loc="lower right" if maximize else "upper right", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    return fig


def _continued_colour(number: int, child_of: dict[int, FrozenTrial], colour: dict[int, Any]) -> Any:
    """A paused trial takes the colour of the complete trial its continuations (paused again, maybe) end in."""
    for _ in range(len(child_of)):
        child = child_of.get(number)
        if child is None:
            break
        number = child.number
        if number in colour:
            return colour[number]
    return GREY


def _draw_rungs(ax: Any, plan: Any) -> str:
    """The rung epochs as dotted lines, each labelled (with its rank correlation when the rungs are automatic);
    returns the rungs in words for the title, or "" when the study has none."""
    if not isinstance(plan, dict) or not plan.get("rungs"):
        return ""
    correlation = plan.get("correlation") or {}
    for epoch in plan["rungs"]:
        ax.axvline(epoch, color="0.25", lw=1, ls=":", zorder=0, gid="rung")
        rho = correlation.get(str(epoch))
        ax.text(epoch, 0.99, f" rung {epoch}" + (f"\n rho {rho:.2f}" if rho is not None else ""), fontsize=8,
                va="top", ha="left", color="0.25", transform=ax.get_xaxis_transform())
    if plan.get("mode") == "auto":
        return f"auto rungs (rho >= {plan.get('threshold')} over {plan.get('trials')} trials)"
    return "fixed rungs"


def best_over_time_figure(study: optuna.Study) -> Any:
    """The best value against wall-clock time (see _best_over_time), in matplotlib's default style."""
    with _pyplot().style.context("default"):
        return _best_over_time(study)


def _best_over_time(study: optuna.Study) -> Any:
    """The curve a user buys: the best metric (first objective, feasible complete trials) against minutes since
    the first trial started, every complete trial a dot, and `best --evaluate`'s held-out test accuracy."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    metric, maximize = schema.objective_names(study)[0], schema.maximize(study)
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.values and t.datetime_complete),
                  key=lambda t: (t.datetime_complete, t.number))
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    if not starts or not done:
        ax.text(0.5, 0.5, "no complete trial with a time yet", ha="center", transform=ax.transAxes)
        fig.tight_layout()
        return fig
    t0 = min(starts)
    span = max((t.datetime_complete - t0).total_seconds() for t in done if t.datetime_complete) / 60
    unit, per = ("hours", 60.0) if span > 600 else ("minutes", 1.0)

    def when(t: FrozenTrial) -> float:
        return (t.datetime_complete - t0).total_seconds() / 60 / per if t.datetime_complete else 0.0

    fits = [t for t in done if schema.feasible(t)]
    misfits = [t for t in done if not schema.feasible(t)]
    ax.plot([when(t) for t in fits], [t.values[0] for t in fits], "o", ms=4, color="tab:blue", alpha=0.6,
            zorder=4, gid="trials", label="complete trial")
    if misfits:
        ax.plot([when(t) for t in misfits], [t.values[0] for t in misfits], "o", ms=4, mfc="none", color=GREY,
                gid="infeasible", label="breaks a constraint")
    xs: list[float] = []
    ys: list[float] = []
    for t in fits:
        best = t.values[0] if not ys else (max if maximize else min)(ys[-1], t.values[0])
        xs.append(when(t))
        ys.append(best)
    also: list[float] = []
    if ys:
        end = max(when(t) for t in done)
        ax.step([*xs, end], [*ys, ys[-1]], where="post", color="tab:orange", lw=2.2, zorder=3, gid="best so far",
                label=f"best {metric} so far")
        ax.annotate(f"{ys[-1]:.4f}", (end, ys[-1]), xytext=(4, 4), textcoords="offset points", fontsize=9,
                    color="tab:orange")
        also.append(ys[-1])
    top = ax
    test = study.user_attrs.get(schema.TEST_ATTR)
    if isinstance(test, dict) and isinstance(test.get("test_accuracy"), (int, float)):
        target = top = ax if maximize else ax.twinx()       # a loss is not on accuracy's scale
        accuracy = float(test["test_accuracy"])
        label = f"test accuracy of {schema.tested_model(test)}: {accuracy:.4f}"
        target.axhline(accuracy, color="crimson", ls="--", lw=1.3, zorder=2, gid="test accuracy", label=label)
        source = next((t for t in done if t.number == test.get("trial")), None)
        if source is not None:
            target.plot([when(source)], [accuracy], "*", ms=13, color="crimson", zorder=5, gid="test point")
        if target is ax:
            also.append(accuracy)
        else:
            target.set_ylabel("held-out test accuracy")
    limits = clipped_range([t.values[0] for t in done], maximize, also)
    if limits:
        ax.set_ylim(*limits)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10))
    ax.set_xlim(0, max(when(t) for t in done) * 1.08 or 1.0)      # room for the last value's label
    ax.set_xlabel(f"{unit} since the first trial started")
    ax.set_ylabel(metric)
    ax.set_title(f"Best {metric} so far against wall-clock time ({len(done)} of {len(trials)} trials complete)",
                 fontsize=11)
    ax.grid(alpha=0.25)
    handles = [h for a in dict.fromkeys([ax, top]) for h in a.get_legend_handles_labels()[0]]
    if top is not ax:            # the trials' axes in front, so that one legend finds room among their dots
        ax.set_zorder(top.get_zorder() + 1)
        ax.patch.set_visible(False)
    ax.legend(handles=handles, loc="best", fontsize=9, framealpha=0.85)
    fig.tight_layout()
    return fig


def save_png(fig: Any, path: str) -> str:
    """Write a figure as a PNG and free it (pyplot keeps every open figure otherwise)."""
    plt = _pyplot()
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def learning_curves_png(study: optuna.Study, path: str) -> str:
    return save_png(learning_curves_figure(study), path)


def best_over_time_png(study: optuna.Study, path: str) -> str:
    return save_png(best_over_time_figure(study), path)
