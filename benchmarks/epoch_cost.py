"""Issue 5, benchmark 3: what a sweep trial costs per epoch over a bare ``model.fit``.

    .venv/bin/python benchmarks/epoch_cost.py [--epochs 6] [--repeats 3]

The same model (simple_cnn, width 32, depth 2, the workers' builder), the
same data (the 5,000 MNIST images' training split), batch size 64 and 2
TensorFlow threads, trained two ways, alternating, ``--repeats`` times:

- bare: the 20-line script below, in a fresh Python process: ``model.fit``
  on the arrays, nothing else;
- sweep: ``sweeps run`` on a one-trial YAML (SQLite, one worker of 2 CPUs),
  the whole path: Ray actor, object-store data, tf.data pipeline, the
  per-epoch report round trip to the coordinator and its checkpoint.

Each side's time is its ``fit`` wall time over all epochs except the first
(the first pays for tracing in both), read from per-epoch timestamps: the
bare script's own, and, for the sweep, the trial's ``epoch_seconds`` user
attribute. Prints a Markdown table row with the medians and their ratio.

With ``--cpu`` it also samples every process of each sweep (the CLI with the
coordinator, Ray's daemons, the trainer's worker) and prints the CPU seconds
each used per run: on 2 cores whatever is not the trainer competes with it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import clisweep
import psutil

ROOT = Path(__file__).resolve().parents[1]

BARE = r'''
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras
from workers import data, models
from workers.hyperparameters import DEFAULTS as PARAMETER_DEFAULTS
from workers.trainer import configure_threads
configure_threads(2)
epochs = int(sys.argv[1])
d = data.load({"name": "mnist", "val_fraction": 0.2, "test_fraction": 0.1}, seed=0)
keras.utils.set_random_seed(0)
model = models.build(dict(PARAMETER_DEFAULTS), d.input_shape, d.n_classes)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
ends = []
stamp = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: ends.append(time.perf_counter()))
start = time.perf_counter()
model.fit(d.x_train, d.y_train, batch_size=64, epochs=epochs, validation_data=(d.x_val, d.y_val), verbose=0,
          callbacks=[stamp])
print(json.dumps([ends[0] - start] + [b - a for a, b in zip(ends, ends[1:])]))
'''

SPACE = {
    "study": "epoch-cost", "dataset": {"name": "mnist", "val_fraction": 0.2}, "seed": 0,
    "sampler": {"name": "random"}, "pruner": {"name": "none"}, "budget": {"n_trials": 1}, "parallel": 1,
    "resources": {"cpus": 2}, "parameters": {"learning_rate": 1e-3, "batch_size": 64, "optimizer": "adam"},
}


def bare(epochs: int) -> list[float]:
    out = subprocess.run([sys.executable, "-c", BARE, str(epochs)], cwd=ROOT, check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _label(proc: psutil.Process) -> str:
    """A readable name for a process in the sweep's tree: Ray's own daemons, its workers by title, the CLI."""
    name = proc.name()
    if name.startswith("ray::TrainerWorker"):
        return "Ray worker: the trainer"
    if name.startswith("ray::ReportBroker"):
        return "Ray worker: the report broker"
    if name.startswith("ray::"):
        return name                   # Ray's agents (DashboardAgent, RuntimeEnvAgent), idle workers
    cmd = proc.cmdline()
    if "sweeps.cli" in cmd:
        return "sweeps CLI (coordinator)"
    script = next((Path(a).name for a in cmd[1:] if a.endswith(".py")), None)
    return script or name


def sweep(epochs: int, cpu: dict[str, float] | None = None) -> list[float]:
    """One one-trial sweep; with ``cpu``, add each process's CPU seconds (user + system) to it by label."""
    seen: dict[int, tuple[str, float]] = {}

    def sample(proc: subprocess.Popen[bytes]) -> None:
        try:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in tree:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    seen[p.pid] = (_label(p), t.user + t.system)
            except psutil.Error:
                pass              # ended between the listing and the read: its last sample stands

    _, [trial] = clisweep.run({**SPACE, "epochs": epochs}, watch=sample if cpu is not None else None)
    for label, seconds in seen.values():
        cpu[label] = cpu.get(label, 0.0) + seconds
    return list(trial.user_attrs["epoch_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", action="store_true",
                        help="also sum the CPU seconds of every process of the sweeps (the sampling costs some CPU "
                             "itself, so time the ratio without it)")
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"bare": [], "sweep": []}
    cpu: dict[str, float] | None = {} if args.cpu else None
    for i in range(args.repeats):
        for side in ("bare", "sweep") if i % 2 == 0 else ("sweep", "bare"):
            started = time.monotonic()
            epochs = bare(args.epochs) if side == "bare" else sweep(args.epochs, cpu)
            runs[side].append(sum(epochs[1:]) / (len(epochs) - 1))
            print(f"{side}: {runs[side][-1]:.3f} s/epoch after the first ({time.monotonic() - started:.0f} s run)",
                  file=sys.stderr, flush=True)
    b, s = statistics.median(runs["bare"]), statistics.median(runs["sweep"])
    print(f"| {datetime.date.today()} | {platform.node()}, {os.cpu_count()} cores, CPU | "
          f"`benchmarks/epoch_cost.py --epochs {args.epochs} --repeats {args.repeats}{' --cpu' if args.cpu else ''}` "
          f"| {b:.3f} s | {s:.3f} s | "
          f"{s / b:.3f} | {', '.join(f'{x:.3f}' for x in runs['bare'])} / {', '.join(f'{x:.3f}' for x in runs['sweep'])} |")
    if cpu is not None:
        total = sum(cpu.values())
        print(f"CPU seconds per sweep run ({args.repeats} runs of {args.epochs} epochs), by process:")
        for label, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
            print(f"- {label}: {seconds / args.repeats:.1f} s ({seconds / total:.0%})")


if __name__ == "__main__":
    main()
