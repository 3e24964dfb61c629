"""The shipped pruner replayed on a finished study whose trials ran to the end: its false-prune rate on every
decision it would have made, not on the audited share alone.

    .venv/bin/python benchmarks/prune_replay.py --storage sqlite:///OUT/random-1.db --study random-1

A random-search run (``pruner: none``) or an audited run (``pruner.audit: 0.99``) of
``benchmarks/search_quality.py`` leaves every search trial's whole curve. The replay walks those trials in the
order they ran, with each epoch placed in time between the trial's start and end (Optuna stores no time per
epoch). At each epoch it asks what the pruner of ``search_spaces/mnist.yaml`` (or ``--min-trials``,
``--threshold``, ``--eta``) would have done then: the automatic rungs from the curves finished by that moment
(``sweeps.rungs.place_rungs``), and at a rung ASHA's rule against the values reported there so far
(``sweeps.rungs.in_top``). A trial is "paused" at its first "no". Then, as the audit counts (``sweeps.pruning.
in_top_quarter``): how many paused trials ended in the top quarter of all complete search trials, and how many
of those a later promotion would have saved (they rank in the rung's top 1/eta once every trial has reported
there). The replay uses the pruner's own functions; it trusts the epoch times to be linear within a trial.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def replay(trials: list[Any], steps: int, eta: int, threshold: float, min_trials: int,
           maximize: bool) -> dict[str, Any]:
    """What the automatic-rung pruner would have paused, and whether those trials ended among the best."""
    from sweeps import rungs
    from sweeps.attrs import CONTINUES, FINALIST_OF, FORKED_FROM
    from sweeps.pruning import in_top_quarter

    done = [t for t in trials if t.state.name == "COMPLETE" and t.values and steps in t.intermediate_values
            and not {FINALIST_OF, FORKED_FROM, CONTINUES} & set(t.user_attrs)]
    done.sort(key=lambda t: t.datetime_start)

    def at(t: Any, epoch: int) -> float:
        span = (t.datetime_complete - t.datetime_start).total_seconds()
        return (t.datetime_start - done[0].datetime_start).total_seconds() + span * epoch / steps

    ended = {t.number: at(t, steps) for t in done}
    paused: dict[int, int] = {}
    rungs_seen: dict[int, list[int]] = {}
    for t in done:
        for epoch in sorted(t.intermediate_values):
            now = at(t, epoch)
            finished = [u for u in done if ended[u.number] < now]
            plan = rungs.place_rungs(rungs.curves(finished, steps), steps, eta, threshold, min_trials)
            if plan.rungs:
                rungs_seen[t.number] = list(plan.rungs)
            if epoch not in plan.rungs:
                continue
            peers = [u.intermediate_values[epoch] for u in done
                     if u is not t and epoch in u.intermediate_values and at(u, epoch) < now]
            if not rungs.in_top(t.intermediate_values[epoch], [*peers, t.intermediate_values[epoch]], eta, maximize):
                paused[t.number] = epoch
                break
    top_quarter = in_top_quarter([t.values[0] for t in done], maximize)
    rows = []
    for t in done:
        if t.number not in paused:
            continue
        epoch = paused[t.number]
        everyone = [u.intermediate_values[epoch] for u in done if epoch in u.intermediate_values]
        rows.append({"trial": t.number, "paused_at": epoch, "value_there": t.intermediate_values[epoch],
                     "final": t.values[0], "in_top_quarter": top_quarter(t.values[0]),
                     "promoted_later": rungs.in_top(t.intermediate_values[epoch], everyone, eta, maximize)})
    false = [r for r in rows if r["in_top_quarter"]]
    return {"trials": len(done), "decisions": len(rows), "paused": rows,
            "in_top_quarter": len(false), "of_those_promoted_later": sum(r["promoted_later"] for r in false),
            "false_prune_rate": round(len(false) / len(rows), 3) if rows else None,
            "rungs_when_last_trial_ran": rungs_seen.get(done[-1].number, []) if done else []}


def main() -> None:
    import yaml

    from sweeps import study as schema

    shipped = yaml.safe_load((ROOT / "search_spaces" / "mnist.yaml").read_text())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--steps", type=int, default=int(shipped["epochs"]))
    parser.add_argument("--eta", type=int, default=int(shipped["pruner"]["reduction_factor"]))
    parser.add_argument("--threshold", type=float, default=float(shipped["pruner"]["threshold"]))
    parser.add_argument("--min-trials", type=int, default=int(shipped["pruner"]["min_trials"]))
    args = parser.parse_args()
    study = schema.load(args.study, args.storage)
    result = replay(study.get_trials(deepcopy=False), args.steps, args.eta, args.threshold, args.min_trials,
                    schema.maximize(study))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
