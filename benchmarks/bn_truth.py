"""Issue 15, item 0: is the value reported after each epoch the weights' real one from epoch 1, and at what cost?

    .venv/bin/python benchmarks/bn_truth.py [--seeds 3] [--epochs 3] [--repeats 2] [--skip-cost | --skip-truth]

Truth: 600 real MNIST images of the digits 0, 1 and 2 (200 each, 28x28;
480 to train, 120 to validate), simple_cnn with BatchNorm (the defaults:
width 32, depth 2, batch 64, so 8 steps an epoch, Adam 1e-3), trained by the
trainer itself (``workers.trainer.train_trial``) under each mechanism:

- fixed 0.9: today's moving averages, BatchNorm momentum 0.9, no re-estimate;
- momentum from steps: moving averages with momentum 0.01 ** (1 / steps per
  epoch), no re-estimate;
- re-estimate over N images (``workers/precise_bn.py``), and by the rule kept
  there (a quarter of the training images, at least 128, at most 512).

For each epoch the reported val_accuracy is set against the same weights
(the epoch's checkpoint) with every BatchNorm layer's statistics taken from
the whole training set as one batch ("fresh"); the table shows the mean and
the largest |reported - fresh| over the seeds, in points (0.01 = 1 point).

Cost: MNIST-5k (``{name: mnist}``: 4,000 to train, 63 steps of 64) through
the trainer, with the re-estimate (over 256 and 1,024 images, and by the
rule: 512) and without, alternating, ``--repeats`` times: the median seconds per epoch after the
first (training, validation, report and checkpoint), the re-estimate's own
seconds (timed around each call; on a shared machine whole epochs vary more
than the re-estimate costs, so its share is taken of the median epoch
without it), and the same gaps as above at this size. 2 TensorFlow threads.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from workers import checkpoint as ckpt  # noqa: E402
from workers import data, models, precise_bn, sources  # noqa: E402
from workers.hyperparameters import DEFAULTS  # noqa: E402
from workers.spec import Decision, EpochReport, TrialSpec  # noqa: E402
from workers.trainer import configure_threads, train_trial  # noqa: E402

PARAMS = dict(DEFAULTS)          # simple_cnn, BatchNorm on, width 32, depth 2, batch 64, Adam 1e-3
DEFAULT_MOMENTUM, DEFAULT_IMAGES = models.BN_MOMENTUM, (precise_bn.MIN_IMAGES, precise_bn.MAX_IMAGES)
RECALIBRATION_SECONDS: list[float] = []


class Keep:
    def __init__(self) -> None:
        self.reports: list[EpochReport] = []

    def report(self, report: EpochReport) -> Decision:
        self.reports.append(report)
        return Decision.CONTINUE


def three_digits(per_class: int = 200) -> data.Arrays:
    x, y, _ = sources.mnist()
    rng = np.random.default_rng(0)
    chosen = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(3)])
    x_train, y_train, x_val, y_val = data.stratified_split(x[chosen], y[chosen], 0.2, 0)
    return data.Arrays(x_train, y_train, x_val, y_val, ("0", "1", "2"))


def fresh_accuracy(arrays: data.Arrays, weights: list[np.ndarray]) -> float:
    """The weights, with every BatchNorm layer's statistics those of the whole training set (one batch)."""
    import keras

    model = models.build(PARAMS, arrays.input_shape, arrays.n_classes)
    model.set_weights(weights)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(arrays.x_train, training=True)
    predicted = np.argmax(model.predict(arrays.x_val, batch_size=256, verbose=0), axis=1)
    return float(np.mean(predicted == arrays.y_val))


def run(arrays: data.Arrays, seed: int, epochs: int, momentum: float, images: int,
        fresh: bool = True) -> tuple[list[float], list[float], dict[str, Any]]:
    """One trial under one mechanism (``images``: re-estimate over that many, 0 none, -1 the kept rule):
    reported values, fresh values (or none), the result's metrics."""
    models.BN_MOMENTUM = momentum
    if images >= 0:
        precise_bn.MIN_IMAGES = precise_bn.MAX_IMAGES = images
    RECALIBRATION_SECONDS.clear()
    try:
        keep = Keep()
        result = train_trial(TrialSpec(number=0, params=PARAMS, epochs=epochs, seed=seed), arrays, keep)
    finally:
        models.BN_MOMENTUM, (precise_bn.MIN_IMAGES, precise_bn.MAX_IMAGES) = DEFAULT_MOMENTUM, DEFAULT_IMAGES
    reported = [r.value for r in keep.reports]
    truth = [fresh_accuracy(arrays, ckpt.unpack(r.checkpoint).weights) for r in keep.reports if r.checkpoint] \
        if fresh else []
    return reported, truth, result.metrics


def timed_recalibration() -> None:
    """Adds each re-estimate's seconds to RECALIBRATION_SECONDS."""
    call = precise_bn.Recalibrator.__call__

    def timed(self: precise_bn.Recalibrator, images: np.ndarray) -> int:
        start = time.perf_counter()
        try:
            return call(self, images)
        finally:
            RECALIBRATION_SECONDS.append(time.perf_counter() - start)

    precise_bn.Recalibrator.__call__ = timed      # type: ignore[method-assign]


def used(n: int, images: int) -> int:
    """The images a re-estimate over ``images`` (-1: the rule) takes from ``n``: whole batches."""
    if images >= 0:
        batch = max(1, min(PARAMS["batch_size"], n, images))
        return max(batch, min(n, images) // batch * batch) if images else 0
    return len(precise_bn.sample(n, PARAMS["batch_size"], 0))


def rule_name(n: int) -> str:
    return f"**kept: re-estimate by the rule ({used(n, -1)} images)**"


def gap_cells(reported: list[list[float]], truth: list[list[float]], epochs: int) -> list[str]:
    cells = []
    for e in range(epochs):
        gaps = [100 * abs(r[e] - t[e]) for r, t in zip(reported, truth)]
        cells.append(f"{statistics.mean(gaps):.1f} / {max(gaps):.1f}")
    return cells


def truth_table(seeds: int, epochs: int) -> None:
    arrays = three_digits()
    steps = -(-len(arrays.y_train) // PARAMS["batch_size"])
    mechanisms = [("fixed momentum 0.9 (today)", DEFAULT_MOMENTUM, 0),
                  (f"momentum from steps, 0.01^(1/{steps}) = {0.01 ** (1 / steps):.3f}", 0.01 ** (1 / steps), 0),
                  *[(f"re-estimate over {used(len(arrays.y_train), n)} images", DEFAULT_MOMENTUM, n)
                    for n in (64, 256, len(arrays.y_train))],
                  (rule_name(len(arrays.y_train)), DEFAULT_MOMENTUM, -1)]
    print(f"\n### Truth: MNIST 0, 1, 2; {len(arrays.y_train)} training / {len(arrays.y_val)} validation images, "
          f"{steps} steps an epoch, seeds 1..{seeds}\n")
    print("| mechanism | " + " | ".join(f"epoch {e + 1}: reported / fresh" for e in range(epochs)) + " | "
          + " | ".join(f"epoch {e + 1} gap, mean / max (points)" for e in range(epochs)) + " | s per epoch | re-estimate s |")
    print("|---" * (2 * epochs + 3) + "|")
    for name, momentum, images in mechanisms:
        reported, truth, spent, seconds = [], [], [], []
        for seed in range(1, seeds + 1):
            r, t, metrics = run(arrays, seed, epochs, momentum, images)
            reported.append(r)
            truth.append(t)
            spent.extend(RECALIBRATION_SECONDS[1:])      # the first pays for tracing
            seconds.extend(metrics["epoch_seconds"][1:])
        values = [f"{statistics.mean(r[e] for r in reported):.3f} / {statistics.mean(t[e] for t in truth):.3f}"
                  for e in range(epochs)]
        cost = f"{statistics.median(spent):.3f}" if images else "-"
        print(f"| {name} | " + " | ".join(values) + " | " + " | ".join(gap_cells(reported, truth, epochs))
              + f" | {statistics.median(seconds):.2f} | {cost} |", flush=True)


def cost_table(repeats: int, epochs: int) -> None:
    arrays = data.load({"name": "mnist"}, seed=0).training_only()
    steps = -(-len(arrays.y_train) // PARAMS["batch_size"])
    print(f"\n### Cost: MNIST-5k, {len(arrays.y_train)} training images, {steps} steps an epoch, "
          f"{epochs} epochs, {repeats} repeats alternating\n")
    found: dict[str, dict[str, list[Any]]] = {}
    for repeat in range(repeats):
        for name, images in (("moving averages (0.9), no re-estimate", 0),
                             *((f"re-estimate over {n} images", n) for n in (256, 1024)),
                             (rule_name(len(arrays.y_train)), -1)):
            fresh = repeat == 0
            reported, truth, metrics = run(arrays, 1, epochs, DEFAULT_MOMENTUM, images, fresh=fresh)
            row = found.setdefault(name, {"epoch": [], "recal": [], "reported": [], "truth": []})
            row["epoch"].extend(metrics["epoch_seconds"][1:])
            row["recal"].extend(RECALIBRATION_SECONDS[1:] if images else [])
            if fresh:
                row["reported"].append(reported)
                row["truth"].append(truth)
    print("| mechanism | s per epoch (median, after the first) | re-estimate s | share of an epoch without it | "
          + " | ".join(f"epoch {e + 1}: reported / fresh" for e in range(epochs)) + " | largest gap (points) |")
    print("|---" * (epochs + 5) + "|")
    base = statistics.median(next(iter(found.values()))["epoch"])
    for name, row in found.items():
        per_epoch = statistics.median(row["epoch"])
        recal = statistics.median(row["recal"]) if row["recal"] else 0.0
        reported, truth = row["reported"][0], row["truth"][0]
        values = [f"{reported[e]:.3f} / {truth[e]:.3f}" for e in range(epochs)]
        gap = max(100 * abs(r - t) for r, t in zip(reported, truth))
        print(f"| {name} | {per_epoch:.2f} | {recal:.2f} | {100 * recal / base:.1f} % | "
              + " | ".join(values) + f" | {gap:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of the cost table")
    parser.add_argument("--skip-cost", action="store_true", help="only the truth table")
    parser.add_argument("--skip-truth", action="store_true", help="only the cost table")
    args = parser.parse_args()
    import keras

    configure_threads(2)
    timed_recalibration()
    print(f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores, Keras {keras.__version__} "
          f"({keras.backend.backend()})")
    if not args.skip_truth:
        truth_table(args.seeds, args.epochs)
    if not args.skip_cost:
        cost_table(args.repeats, args.epochs)


if __name__ == "__main__":
    main()
