"""Held-out test accuracy of trials' models alone and of every ensemble of them (their class probabilities
averaged, as ``finalists.ensemble`` hands over), from a finished study's kept checkpoints.

    .venv/bin/python benchmarks/average_runs.py --storage sqlite:///out/ours-0.db --study ours-0 --trials 0,9,4,10

Used to compare ``ensemble: winner`` and ``ensemble: finalists`` on the same run, and (``--all-only``) the top k
trials by validation averaged (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--trials", required=True, help="comma-separated trial numbers")
    parser.add_argument("--all-only", action="store_true", help="only the ensemble of every given trial (many trials)")
    args = parser.parse_args()
    from sweeps.trained import load_trained

    numbers = [int(n) for n in args.trials.split(",")]
    probabilities, labels = {}, None
    for n in numbers:
        trained = load_trained(args.study, args.storage, n)
        labels = trained.data.y_test
        probabilities[n] = trained.model.predict(trained.data.x_test, batch_size=256, verbose=0)
    for k in ([len(numbers)] if args.all_only else range(1, len(numbers) + 1)):
        for members in itertools.combinations(numbers, k):
            averaged = sum(probabilities[n] for n in members) / k
            print(f"trials {', '.join(map(str, members))}: test {(averaged.argmax(axis=1) == labels).mean():.4f}")


if __name__ == "__main__":
    main()
