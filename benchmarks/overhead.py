"""Issue 5, benchmark 1: orchestration overhead of N fixed-sleep trials, ours against plain Optuna and Ray Tune.

    .venv/bin/python benchmarks/overhead.py --trials 1000 --sleep 0.2 --parallel 2

Every trial "trains" by sleeping ``--sleep`` seconds and reports one value, so
what is left is the cost of asking, dispatching, reporting and telling. Each
system gets a fresh PostgreSQL database (through SWEEPS_TEST_PG_ADMIN, default
the local trust-auth server), the same random sampler and an ASHA pruner:

- ours: ``run_sweep`` with a benchmark-only Ray actor (``SleepWorker``) in
  place of the Keras trainer: the same coordinator, broker, Ray and storage path;
- optuna: ``study.optimize(objective, n_jobs=parallel)``;
- tune: ``ray.tune`` with ``OptunaSearch`` (on the same database) and ``ASHAScheduler``.

Prints one Markdown row per system: wall time and wall / ideal, where ideal is
trials x sleep / parallel, with and without start-up (starting Ray and the
trial slots; Ray Tune: ``ray.init``; plain Optuna has none). Needs ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgdb import fresh_database  # noqa: E402

from sweeps.storage import driver_url  # noqa: E402

SPACE = {"learning_rate": (1e-4, 1e-1), "dropout": (0.0, 0.5), "batch_size": [32, 64, 128]}


def score(learning_rate: float, dropout: float, batch_size: int) -> float:
    """A made-up accuracy with one best region, so samplers and pruners have something to do."""
    return 0.9 - 0.05 * (math.log10(learning_rate) + 2.5) ** 2 - 0.2 * (dropout - 0.2) ** 2 - 0.0001 * batch_size


class SleepWorker:
    """A trial slot whose training is a fixed sleep; the rest is the production path (broker report, result)."""

    seconds = 0.2

    def __init__(self, threads: int = 1) -> None:
        pass

    def train(self, spec: Any, data: Any, broker: Any) -> Any:
        from workers.remote import BrokerReporter
        from workers.spec import Decision, EpochReport, TrialResult, TrialState

        time.sleep(self.seconds)
        p = spec.params
        value = score(p["learning_rate"], p["dropout"], p["batch_size"])
        decision = BrokerReporter(broker).report(EpochReport(spec.number, 1, value, {"val_accuracy": value}))
        state = TrialState.PRUNED if decision == Decision.PRUNE else TrialState.COMPLETE
        return TrialResult(spec.number, state, value, 1)


def ours(url: str, trials: int, parallel: int, sleep: float) -> dict[str, Any]:
    from sweeps.config import from_dict
    from sweeps.raydispatch import RayDispatcher
    from sweeps.runner import run_sweep

    (lr_low, lr_high), (d_low, d_high), sizes = SPACE.values()
    config = from_dict({
        "study": "overhead", "dataset": {"name": "digits"}, "epochs": 1, "seed": 0,
        "sampler": {"name": "random"}, "pruner": {"name": "asha", "min_resource": 1},
        "budget": {"n_trials": trials}, "parallel": parallel, "resources": {"cpus": 1},
        "parameters": {"learning_rate": {"low": lr_low, "high": lr_high, "log": True},
                       "dropout": {"low": d_low, "high": d_high}, "batch_size": {"values": sizes}},
    }, source="benchmark")
    SleepWorker.seconds = sleep
    first: list[float] = []

    def note(progress: Any) -> None:
        if not first and progress.last.startswith("trial "):
            first.append(time.monotonic())

    started = time.monotonic()
    summary = run_sweep(config, url, dispatcher=RayDispatcher(config, worker=SleepWorker), on_progress=note)
    end = time.monotonic()
    return {"wall": end - started, "steady": end - first[0], "finished": summary["complete"] + summary["pruned"]}


def plain_optuna(url: str, trials: int, parallel: int, sleep: float) -> dict[str, Any]:
    (lr_low, lr_high), (d_low, d_high), sizes = SPACE.values()

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", lr_low, lr_high, log=True)
        dropout = trial.suggest_float("dropout", d_low, d_high)
        batch = trial.suggest_categorical("batch_size", sizes)
        time.sleep(sleep)
        value = score(lr, dropout, batch)
        trial.report(value, 1)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return value

    study = optuna.create_study(storage=driver_url(url), study_name="overhead", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1))
    started = time.monotonic()
    study.optimize(objective, n_trials=trials, n_jobs=parallel)
    wall = time.monotonic() - started
    return {"wall": wall, "steady": wall, "finished": sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))}


def ray_tune(url: str, trials: int, parallel: int, sleep: float) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    (lr_low, lr_high), (d_low, d_high), sizes = SPACE.values()

    def trainable(config: dict[str, Any]) -> None:
        time.sleep(sleep)
        tune.report({"accuracy": score(config["learning_rate"], config["dropout"], config["batch_size"])})

    space = {"learning_rate": optuna.distributions.FloatDistribution(lr_low, lr_high, log=True),
             "dropout": optuna.distributions.FloatDistribution(d_low, d_high),
             "batch_size": optuna.distributions.CategoricalDistribution(sizes)}
    search = OptunaSearch(space, metric="accuracy", mode="max", sampler=optuna.samplers.RandomSampler(seed=0),
                          study_name="overhead", storage=optuna.storages.RDBStorage(driver_url(url)))
    started = time.monotonic()
    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=parallel, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as results:
            tuner = tune.Tuner(
                tune.with_resources(trainable, {"cpu": 1}),
                tune_config=tune.TuneConfig(search_alg=search, num_samples=trials, max_concurrent_trials=parallel,
                                            scheduler=ASHAScheduler(metric="accuracy", mode="max", max_t=1,
                                                                    grace_period=1)),
                run_config=tune.RunConfig(storage_path=results, verbose=0))
            fit = time.monotonic()
            grid = tuner.fit()
            end = time.monotonic()
    finally:
        ray.shutdown()
    return {"wall": end - started, "steady": end - fit, "finished": len(grid)}


SYSTEMS = {"ours": ours, "optuna": plain_optuna, "tune": ray_tune}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated: " + ", ".join(SYSTEMS))
    args = parser.parse_args()
    ideal = args.trials * args.sleep / args.parallel
    print(f"| date | machine | system | trials finished | wall | wall / ideal ({ideal:.0f} s) "
          "| without start-up | ratio without start-up |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.only.split(","):
        with fresh_database() as url:
            out = SYSTEMS[name](url, args.trials, args.parallel, args.sleep)
        print(f"| {datetime.date.today()} | {platform.node()}, {os.cpu_count()} cores | {name} | {out['finished']} "
              f"| {out['wall']:.1f} s | {out['wall'] / ideal:.3f} | {out['steady']:.1f} s | {out['steady'] / ideal:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
