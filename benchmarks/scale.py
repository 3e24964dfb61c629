"""Issue 5, benchmark 2: the coordinator's cost per trial at trial 100 and at trial 5,000 of one study.

    .venv/bin/python benchmarks/scale.py --trials 5000

One study on a fresh PostgreSQL database (SWEEPS_TEST_PG_ADMIN, default the
local server), one trial slot, and trials that do no training: the
benchmark-only ``SleepWorker`` of ``overhead.py`` with a sleep of 0 reports one
value and returns. What is left per trial is the coordinator's ask (under the
launch lock, with the budget count), dispatch through Ray, the report relay
and the tell. The sampler is random and the pruner none, so the numbers are
the coordinator's and not a sampler's (TPE's own cost grows with the trials
it models; that is Optuna's, and the same in any tool built on it).

Per-trial cost is the median time between consecutive finished trials in a
window of 100 trials around each point. It also prints the coordinator's peak
RSS and whether TensorFlow was ever imported in this (the control-plane) process.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import overhead  # noqa: E402
import pgdb  # noqa: E402
import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(overhead)     # Ray workers need not find benchmarks/ on their path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--early", type=int, default=100, help="the early point (trial number)")
    args = parser.parse_args()

    from sweeps.config import from_dict
    from sweeps.raydispatch import RayDispatcher
    from sweeps.runner import run_sweep

    config = from_dict({
        "study": "scale", "dataset": {"name": "digits"}, "epochs": 1, "seed": 0,
        "sampler": {"name": "random"}, "pruner": {"name": "none"},
        "budget": {"n_trials": args.trials}, "parallel": 1, "resources": {"cpus": 1},
        "parameters": {"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
                       "dropout": {"low": 0.0, "high": 0.5}, "batch_size": {"values": [32, 64, 128]}},
    }, source="benchmark")
    overhead.SleepWorker.seconds = 0.0
    finished: list[float] = []

    def note(progress: Any) -> None:
        if progress.last.startswith("trial ") and " started" not in progress.last:
            finished.append(time.monotonic())

    with pgdb.fresh_database() as url:
        started = time.monotonic()
        summary = run_sweep(config, url, dispatcher=RayDispatcher(config, worker=overhead.SleepWorker),
                            on_progress=note)
        wall = time.monotonic() - started

    def cost(at: int) -> float:
        window = finished[max(1, at - 50):at + 50]
        return statistics.median(b - a for a, b in zip(window, window[1:]))

    early, late = cost(args.early), cost(len(finished) - 50)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tf = "tensorflow" in sys.modules
    print(f"{summary['complete']} complete in {wall:.0f} s")
    print("| date | machine | trials | per trial at ~100 | per trial at ~N | growth | peak RSS | TensorFlow imported |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {datetime.date.today()} | {platform.node()}, {os.cpu_count()} cores | {len(finished)} "
          f"| {early * 1000:.1f} ms | {late * 1000:.1f} ms | {late / early:.2f}x | {rss_mb:.0f} MB | {tf} |")


if __name__ == "__main__":
    main()
