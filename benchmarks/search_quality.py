"""Issue 15's benchmark: what a sweep hands over, and how soon it gets there, on the 5,000 MNIST images.

    .venv/bin/python benchmarks/search_quality.py --systems ours,random --seeds 0,1 --minutes 20

One run per system and seed, ``--minutes`` each, 2 trials at a time with one thread each (this machine's cores):

- ours: the shipped ``search_spaces/mnist.yaml`` as it is (its sampler, pruner, audit, finalists and
  ``n_trials``), with the timeout set to the run's minutes (the finalists must fit in them: the timeout's
  reserve);
- random: the same YAML with ``sampler: random``, ``pruner: none``, ``finalists: 0`` and no ``seed_trials``
  (random search: its first trials are the random draws); ``random-seeded`` keeps the YAML's seed trials;
- audited: the YAML with ``pruner.audit: 0.99``: every trial the pruner would stop runs on, marked audited, so
  the false-prune rate of the shipped pruner rests on every decision it made, not on a tenth of them.

Every complete trial's checkpoint is kept (``keep_best`` 1000), so any trial's model can be tested. The clock
starts when ``run_sweep`` is called (Ray and TensorFlow start-up included); at ``--minutes`` the sweep is
stopped as a second Ctrl-C stops it. From the run:

- time to validation accuracy 0.975, 0.983, 0.988 and 0.992: the first epoch of any trial at or above it;
- anytime quality: the model each would hand over at half the minutes and at the end (the best trial
  finished by then; ours: the finalists' winner once a finalist run finished by then, under
  ``finalists.ensemble`` its runs finished by then with their probabilities averaged, as the handed-over
  model does; before a finalist run finished, under ``ensemble: finalists``, the best ``count x (seeds + 1)``
  complete trials averaged, as ``sweeps best`` hands over then), and its accuracy on the held-out test split
  (500 images, never seen by a trial); for every system also ``top4``: the best 4 complete trials by then
  averaged, what that provisional ensemble would have given random search too;
- ours: the prune audit's false-prune rate, the rungs placed, trials paused and continued.

``--dataset D.npz`` runs the same YAML with only its dataset changed (``dataset: {name: npz, path: D}``, the
YAML's split fractions), e.g. on ``benchmarks/corrupted_mnist.py``'s harder 28x28 images.

``--epochs E --trials N`` runs each trial for E epochs instead of the YAML's 20 (its cosine schedule then
ends at E: a budget-scaled trial, as a Hyperband bracket of E epochs would run it) and stops after N trials;
``--systems random --seeds 0 --epochs 10 --trials 2`` trains random seed 0's first two configurations at 10
epochs, to compare their time to target with the same two at 20.

Results go to ``--out`` (one JSON per run, the SQLite studies) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sqlite3
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = (0.975, 0.983, 0.988, 0.992)     # 0.992: beyond the issue's three, where the search may matter
PARALLEL = 2


def _name(system: str, seed: int, epochs: int | None, trials: int | None, dataset: str | None = None) -> str:
    return ((f"{Path(dataset).stem}-" if dataset else "") + f"{system}-{seed}" + (f"-e{epochs}" if epochs else "")
            + (f"-n{trials}" if trials else ""))


def _config(system: str, seed: int, minutes: float, out: Path, epochs: int | None = None,
            trials: int | None = None, dataset: str | None = None) -> Any:
    import yaml

    from sweeps.config import from_dict

    raw = yaml.safe_load((ROOT / "search_spaces" / "mnist.yaml").read_text())
    if epochs:
        raw["epochs"] = epochs
    budget = {**raw.get("budget", {}), "timeout": minutes * 60, **({"n_trials": trials} if trials else {})}
    if dataset:                           # only the dataset changed, as a user would try the YAML on theirs
        raw["dataset"] = {**raw["dataset"], "name": "npz", "path": str(Path(dataset).resolve())}
    raw.update(study=_name(system, seed, epochs, trials, dataset), seed=seed, budget=budget,
               parallel=PARALLEL, resources={"cpus": 1, "gpus": 0}, tensorboard=False,
               checkpoints={"store": str(out / "checkpoints"), "keep_best": 1000})
    if system.startswith("random"):
        raw.update(sampler={"name": "random"}, pruner={"name": "none"}, finalists=0)
    if system == "random":
        raw.pop("seed_trials", None)
    if system == "audited":
        raw.update(pruner={**raw["pruner"], "audit": 0.99})
    return from_dict(raw, source="benchmark")


def _watch(db: Path, started: float, minutes: float, out: dict[str, Any], targets: tuple[float, ...]) -> None:
    """The first time each target is reached; at the end, a second Ctrl-C (running trials are recorded)."""
    while not out.get("ended"):
        time.sleep(1.0)
        best = None
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                    best = conn.execute("SELECT max(intermediate_value) FROM trial_intermediate_values").fetchone()[0]
            except sqlite3.Error:
                pass
        elapsed = time.monotonic() - started
        for target in targets:
            if best is not None and best >= target and out["reached"].get(str(target)) is None:
                out["reached"][str(target)] = round(elapsed, 1)
        if elapsed > minutes * 60:
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
            return


def handed_over(study: Any, trials: list[Any], by: datetime.datetime) -> tuple[Any, list[int]]:
    """The trial a sweep would hand over if it ended at ``by``: the finalists' winner among runs finished by
    then, else the best complete trial finished by then; and the runs finished by then that
    ``finalists.ensemble`` averages (``sweeps.study.ensemble_runs``), or without it the winner's runs (their
    average is reported beside the best run)."""
    from sweeps import study as schema

    maximize = schema.maximize(study)
    done = [t for t in trials if t.datetime_complete is not None and t.datetime_complete <= by]
    table = schema.standings(done, maximize)
    if table:
        return table[0]["trial"], schema.ensemble_runs(study, done) or table[0]["trials"]
    complete = [t for t in done if t.state.name == "COMPLETE" and t.values and schema.FINALIST_OF not in t.user_attrs]
    if not complete:
        return None, []
    sign = 1 if maximize else -1
    return max(complete, key=lambda t: (sign * t.values[0], -t.number)), schema.ensemble_runs(study, done)


def run(system: str, seed: int, minutes: float, out: Path, epochs: int | None = None,
        trials: int | None = None, dataset: str | None = None, targets: tuple[float, ...] = TARGETS) -> dict[str, Any]:
    from sweeps import study as schema
    from sweeps.runner import run_sweep
    from sweeps.summary import search

    out.mkdir(parents=True, exist_ok=True)
    name = _name(system, seed, epochs, trials, dataset)
    db = out / f"{name}.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    config = _config(system, seed, minutes, out, epochs, trials, dataset)
    result: dict[str, Any] = {"dataset": dataset or "mnist", "system": system, "seed": seed, "minutes": minutes,
                              "epochs": config.epochs, "n_trials": config.n_trials, "reached": {}}
    wall, started = datetime.datetime.now(), time.monotonic()
    watcher = threading.Thread(target=_watch, args=(db, started, minutes, result, targets),
                               daemon=True)
    watcher.start()
    try:
        run_sweep(config, url)
    except KeyboardInterrupt:
        pass
    finally:
        result["ended"] = True
        result["seconds"] = round(time.monotonic() - started, 1)
    watcher.join(timeout=5)
    study = schema.load(config.study, url)
    trials = study.get_trials(deepcopy=False)
    result["trials"] = len([t for t in trials if t.datetime_start is not None])
    result["states"] = schema.state_counts(trials)
    result["search"] = search(study, trials)
    result["per_trial"], probabilities, labels = _per_trial(config, url, trials, wall)
    tested = {row["trial"]: row for row in result["per_trial"]}
    for label, seconds in (("half", minutes * 30), ("end", minutes * 60)):
        chosen, runs = handed_over(study, trials, wall + datetime.timedelta(seconds=seconds))
        result[label] = None if chosen is None else {k: tested[chosen.number][k] for k in ("trial", "val", "test",
                                                                                           "source")}
        if chosen is not None and len(runs) > 1:     # the runs' probabilities averaged: what the ensemble model does
            averaged = sum(probabilities[n] for n in runs) / len(runs)
            result[label]["single_test"] = result[label]["test"]
            result[label]["ensemble_test"] = float((averaged.argmax(axis=1) == labels).mean())
            result[label]["runs"] = runs
            if config.finalist_ensemble:
                result[label]["test"] = result[label]["ensemble_test"]
        # what-if for every system: the best 4 complete search trials by then, averaged (ours' provisional ensemble)
        top = schema.provisional_runs([t for t in trials if t.datetime_complete is not None and
                                       t.datetime_complete <= wall + datetime.timedelta(seconds=seconds)],
                                      schema.maximize(study), 4)
        if result[label] is not None and top:
            averaged = sum(probabilities[n] for n in top) / len(top)
            result[label]["top4"] = {"runs": top, "test": float((averaged.argmax(axis=1) == labels).mean())}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _per_trial(config: Any, url: str, trials: list[Any],
               wall: datetime.datetime) -> tuple[list[dict[str, Any]], dict[int, Any], Any]:
    """Every complete trial (the handed-over ones among them, tested once): its configuration, validation
    value, start and end (seconds into the run), held-out test accuracy and the checkpoint it was read from,
    to see what the search tried and what selection noise costs; and each one's test probabilities, with
    the test labels, for ensembles of runs."""
    from sweeps import study as schema
    from sweeps.trained import load_trained

    rows, probabilities, labels = [], {}, None
    for t in trials:
        if t.state.name != "COMPLETE" or not t.values:
            continue
        trained = load_trained(config.study, url, t.number)
        labels = trained.data.y_test
        probabilities[t.number] = trained.model.predict(trained.data.x_test, batch_size=256, verbose=0)
        rows.append({"trial": t.number, "params": t.params, "val": schema.first_value(t),
                     "start": round((t.datetime_start - wall).total_seconds(), 1),
                     "end": round((t.datetime_complete - wall).total_seconds(), 1),
                     "test": float((probabilities[t.number].argmax(axis=1) == labels).mean()),
                     "source": trained.source})
    return rows, probabilities, labels


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    runs = (f"; runs {', '.join(map(str, row['runs']))}: best run {row['single_test']:.4f}, averaged "
            f"{row['ensemble_test']:.4f}") if "runs" in row else ""
    top = f"; top 4 averaged {row['top4']['test']:.4f}" if "top4" in row else ""
    return f"{row['test']:.4f} (val {row['val']:.4f}, trial {row['trial']}{runs}{top})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="ours,random")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--epochs", type=int, help="epochs per trial instead of the YAML's (its cosine schedule "
                        "then ends there): a budget-scaled trial")
    parser.add_argument("--trials", type=int, help="budget.n_trials instead of the YAML's")
    parser.add_argument("--dataset", help="an .npz (x_train, y_train) instead of MNIST-5k, e.g. the one "
                        "benchmarks/corrupted_mnist.py writes: the YAML with only its dataset changed")
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)), help="validation accuracies to time")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "search_quality"))
    args = parser.parse_args()
    out = Path(args.out)
    print(f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores, {args.minutes:g} minutes per run")
    targets = tuple(float(t) for t in args.targets.split(","))
    print(f"| system | seed | {' | '.join(f'to {t}' for t in targets)} | test at half | test at end | trials "
          "| false-prune rate |")
    print("|---" * (len(targets) + 6) + "|")
    rows = []
    for system in args.systems.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            r = run(system, seed, args.minutes, out, args.epochs, args.trials, args.dataset, targets)
            rows.append(r)
            times = [f"{r['reached'][str(t)]:.0f} s" if r["reached"].get(str(t)) is not None else
                     f"> {args.minutes * 60:.0f} s" for t in targets]
            audit = r["search"]["audit"]
            rate = "-" if not audit or audit["false_prune_rate"] is None else (
                f"{audit['false_prune_rate']:.2f} ({audit['in_top_quarter']}/{audit['audited']})")
            print(f"| {system} | {seed} | {' | '.join(times)} | {_cell(r['half'])} | {_cell(r['end'])} "
                  f"| {r['trials']} | {rate} |", flush=True)
    for system in args.systems.split(","):
        ends = [r["end"]["test"] for r in rows if r["system"] == system and r["end"]]
        if ends:
            print(f"median test at end, {system}: {statistics.median(ends):.4f}")


if __name__ == "__main__":
    main()
