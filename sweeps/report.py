"""`sweeps report`: one HTML page and PNG images of a study, to read or to share.

Our own pictures of the search (the best value against wall-clock time, and
learning curves that read at a hundred trials: sweeps/plots.py), Optuna's
matplotlib visualisations where they read well (parameter importances,
parallel coordinates, the Pareto front), the best trial's confusion matrix,
and a table of the best trials. Everything is written into one folder;
nothing in it holds the storage password.
"""

from __future__ import annotations

import datetime
import html
import os
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from sweeps import plots
from sweeps import study as schema
from sweeps.errors import SweepsError
from sweeps.storage import mask, resolve_url
from sweeps.summary import search, search_lines

# Drawn here (sweeps/plots.py); the keys are the images' names, kept from when Optuna drew these two.
OWN = {
    "optimization_history": ("Best value so far against wall-clock time", plots.best_over_time_png),
    "intermediate_values": ("Learning curves (validation metric per epoch)", plots.learning_curves_png),
}
PLOTS = {
    "param_importances": ("Parameter importances (fANOVA)", "plot_param_importances"),
    "parallel_coordinate": ("Parallel coordinates", "plot_parallel_coordinate"),
    "pareto_front": ("Pareto front (several objectives)", "plot_pareto_front"),
}
TITLES = {**{k: title for k, (title, _) in OWN.items()}, **{k: title for k, (title, _) in PLOTS.items()},
          "confusion_matrix": "Best trial: confusion matrix"}
TARGETED = ("plot_param_importances", "plot_parallel_coordinate")


def _plot_options(study: optuna.Study, function: str) -> dict[str, Any] | None:
    """Keyword arguments for one of Optuna's plots; None when it does not apply to this study. With several
    objectives the single-objective plots show the metric (the first one)."""
    names = schema.objective_names(study)
    if function == "plot_pareto_front":
        return {"target_names": names} if len(names) in (2, 3) else None
    if len(names) > 1 and function in TARGETED:
        return {"target": schema.first_value, "target_name": names[0]}
    return {}


def write_report(name: str, storage_url: str | None, out: str,
                 say: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    study = schema.load(name, storage_url)
    config = schema.load_config(study)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise SweepsError(f"study {name!r} has no completed trial yet; a report needs at least one")
    os.makedirs(out, exist_ok=True)
    images: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for key, (title, draw) in OWN.items():
        say(f"plotting {title.lower()}")
        try:
            draw(study, os.path.join(out, f"{key}.png"))
            images[key] = f"{key}.png"
        except Exception as e:   # a picture that cannot be drawn never costs the rest of the report
            skipped[key] = str(e).splitlines()[0] if str(e) else type(e).__name__
    for key, (title, function) in PLOTS.items():
        options = _plot_options(study, function)
        if options is None:
            continue
        say(f"plotting {title.lower()}")
        try:
            with warnings.catch_warnings(), matplotlib.rc_context():     # Optuna's ggplot style stays in here
                warnings.simplefilter("ignore")
                axes = getattr(ovm, function)(study, **options)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            figure.savefig(os.path.join(out, f"{key}.png"), dpi=100)
            plt.close(figure)
            images[key] = f"{key}.png"
        except Exception as e:   # e.g. importances need two or more complete trials
            skipped[key] = str(e).splitlines()[0] if str(e) else type(e).__name__
    best = schema.best_trial(study)
    matrix = best.user_attrs.get("confusion_matrix") if best is not None else None
    if best is not None and matrix:
        classes = study.user_attrs.get(schema.DATASET_ATTR, {}).get("class_names") or [str(i) for i in range(len(matrix))]
        plots.confusion_matrix_png(matrix, classes, os.path.join(out, "confusion_matrix.png"),
                                   title=f"best trial {best.number}: validation confusion matrix")
        images["confusion_matrix"] = "confusion_matrix.png"
    page = os.path.join(out, "report.html")
    with open(page, "w", encoding="utf-8") as f:
        f.write(_html(study, config, storage_url, images, skipped))
    say(f"wrote {page}")
    return {"study": name, "html": page, "images": {k: os.path.join(out, v) for k, v in images.items()},
            "skipped": skipped}


def _html(study: optuna.Study, config: Any, storage_url: str | None, images: dict[str, str],
          skipped: dict[str, str]) -> str:
    e = html.escape
    trials = study.get_trials(deepcopy=False)
    counts = schema.state_counts(trials)
    maximize = schema.maximize(study)
    complete = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE),
                      key=lambda t: float(schema.first_value(t) or 0.0), reverse=maximize)[:10]
    names = list(dict.fromkeys(k for t in complete for k in t.params))
    objectives = schema.objective_names(study)[1:]      # shown beside the metric
    rows = "".join(
        "<tr>" + f"<td>{t.number}</td>" + "".join(f"<td>{v:{'.4f' if i == 0 else '.4g'}}</td>" for i, v in enumerate(t.values))
        + f"<td>{t.user_attrs.get('macro_f1', float('nan')):.4f}</td><td>{'yes' if schema.feasible(t) else 'no'}</td>"
        + "".join(f"<td>{e(_fmt(t.params.get(k, '')))}</td>" for k in names) + "</tr>" for t in complete)
    best = schema.best_trial(study)
    best_line = ("none meets the constraints yet" if best is None else
                 f"trial {best.number}, {e(config.metric)} {schema.first_value(best):.4f}; "
                 + e(", ".join(f"{k}={_fmt(v)}" for k, v in schema.full_params(best).items())))
    limits = "".join(f"; {e(k)} {e(', '.join(f'{side} {_fmt(v)}' for side, v in b.items()))}"
                     for k, b in config.to_dict().get("constraints", {}).items())
    sections = "".join(f"<h2>{e(TITLES.get(k, k))}</h2><img src=\"{e(v)}\" alt=\"{e(k)}\">" for k, v in images.items())
    notes = "".join(f"<li>{e(TITLES.get(k, k))}: not drawn ({e(v)})</li>" for k, v in skipped.items())
    test = study.user_attrs.get(schema.TEST_ATTR)
    tested = (f"<p>Held-out test split: {html.escape(schema.tested_model(test), quote=False)}, "
              f"accuracy {test['test_accuracy']:.4f}"
              f" on {e(str(test.get('n_test', '?')))} images ({e(str(test.get('at', '')))}).</p>"
              if isinstance(test, dict) and isinstance(test.get("test_accuracy"), (int, float)) else "")
    decided = search_lines(search(study, trials))      # the rungs, pausing, the audit, the finalists
    tested += f"<ul>{''.join(f'<li>{e(line)}</li>' for line in decided)}</ul>" if decided else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sweeps report: {e(study.study_name)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>Study {e(study.study_name)}</h1>
<p>Storage {e(mask(resolve_url(storage_url)))}; objectives {e(", ".join(f"{n} ({g})" for n, g in config.all_objectives))}
{f"; constraints{limits}" if limits else ""};
budget {config.n_trials} trials; written {datetime.datetime.now().isoformat(timespec="seconds")}.</p>
<p>Trials: {", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v)}.</p>
<p>Best: {best_line}</p>
{tested}
<h2>Best trials</h2>
<table><tr><th>#</th><th>{e(config.metric)}</th>{"".join(f"<th>{e(n)}</th>" for n in objectives)}<th>macro F1</th>
<th>meets constraints</th>{"".join(f"<th>{e(k)}</th>" for k in names)}</tr>
{rows}</table>
{sections}
{f"<ul>{notes}</ul>" if notes else ""}
</body></html>
"""


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
