"""Finalists: after the search, the top configurations trained again with other seeds; the winner is the best mean.

With a validation set of about a thousand images, the best of many trials
is partly the luckiest seed: its validation value overstates it, and the
runner-up is often the better model on test data. Retraining the top
``finalists.count`` configurations ``finalists.seeds`` more times each and
choosing by the mean takes the seed's luck out of the choice (the
validation set's own noise stays). Finalist runs are trials of their own
(``finalist_of``: the configuration's trial), never pruned, outside
``n_trials`` but inside the time and GPU budgets: exploration stops early
enough to leave them room (``reserve_seconds``). ``study.best_trial``
reads the outcome.
"""

from __future__ import annotations

import math
import statistics

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps import study as schema
from sweeps.config import SweepConfig
from sweeps.recovery import trial_seconds


def candidates(trials: list[FrozenTrial], count: int, maximize: bool, among_few: bool = False) -> list[FrozenTrial]:
    """The ``count`` best complete configurations that meet their constraints (one trial each), when the sweep
    completed more than ``count``: among fewer there is nothing to choose, unless ``among_few`` (a timeout's
    reserve began: the finalists' runs are what its time was kept for)."""
    best: dict[int, FrozenTrial] = {}
    for t in trials:
        if (t.state != TrialState.COMPLETE or not t.values or not schema.feasible(t)
                or schema.FINALIST_OF in t.user_attrs or schema.FORKED_FROM in t.user_attrs):
            continue
        cid = schema.config_id(t.number, t.user_attrs)
        if cid not in best or (t.values[0] > best[cid].values[0]) == maximize:
            best[cid] = t
    if len(best) <= count and not among_few:
        return []
    return sorted(best.values(), key=lambda t: (-t.values[0] if maximize else t.values[0], t.number))[:count]


def queue(study: optuna.Study, config: SweepConfig, trials: list[FrozenTrial],
          time_left: float | None, reserve: bool = False) -> tuple[int, str | None]:
    """The finalists once, then late joiners (the caller holds the launch lock): runs queued, and what to say.
    ``reserve``: the timeout's reserve has begun."""
    queued = enqueue(study, config, trials, reserve)
    if queued:                            # all of the configurations chosen are new: the first choice
        first = len(study.user_attrs[schema.FINALISTS_ATTR]["configs"]) * config.finalist_seeds == queued
        what = ("search done: the top configurations train again with more seeds" if first else
                "a search trial before them finished: more finalists chosen")
        return queued, f"{what} ({queued} runs)"
    late = admit_late(study, config, trials, time_left)
    if not late:
        return 0, None
    runs = len(late) * config.finalist_seeds
    return runs, (f"trial(s) {', '.join(map(str, late))} completed after the finalists were chosen and rank among "
                  f"the top: they join them ({runs} runs)")


def enqueue(study: optuna.Study, config: SweepConfig, trials: list[FrozenTrial], reserve: bool = False) -> int:
    """Queue finalists' runs (the caller holds the launch lock); how many were queued.

    A configuration is queued once it is sure to stay among the top ``count`` however the search trials still
    running end: the top ``count - running`` (the best one at once, so a slot has work), the rest as those
    trials finish. Choosing all of them when the reserve began left out a trial that completed 21 s later
    with the best validation value (a 20-minute sweep on harder 28x28 images: its slot then sat idle).
    Once a timeout's ``reserve`` began, no more than ``count`` complete configurations are chosen among too:
    waiting for more left a slot idle for 6 minutes of a 20-minute MNIST sweep, and the finalists' runs, queued
    once the running trial completed, were cut by the timeout.
    """
    chosen = study.user_attrs.get(schema.FINALISTS_ATTR)
    if config.finalists <= 0 or (chosen is not None and not chosen.get("pending")):
        return 0
    taken = chosen["configs"] if chosen else []
    ranked = candidates(trials, config.finalists, schema.maximize(study), among_few=reserve or bool(taken))
    sure = ranked[:max(config.finalists - searching(trials), 0 if taken else 1)]
    new = [t for t in sure if schema.config_id(t.number, t.user_attrs) not in taken][:config.finalists - len(taken)]
    if not new:
        return 0
    _queue_runs(study, config, new)
    configs = taken + [schema.config_id(t.number, t.user_attrs) for t in new]
    pending = config.finalists - len(configs)
    study.set_user_attr(schema.FINALISTS_ATTR, {"configs": configs, "seeds": config.finalist_seeds,
                                                **({"pending": pending} if pending > 0 else {})})
    return len(new) * config.finalist_seeds


def searching(trials: list[FrozenTrial]) -> int:
    """Search trials running or queued (continuations and retries among them; finalists' runs not)."""
    return sum(t.state in (TrialState.RUNNING, TrialState.WAITING) and schema.FINALIST_OF not in t.user_attrs
               for t in trials)


def late_joiners(trials: list[FrozenTrial], config: SweepConfig, chosen: list[int], maximize: bool,
                 time_left: float | None) -> list[FrozenTrial]:
    """Configurations that completed after the finalists were chosen (under a timeout, trials running when its
    reserve began) and rank among the top ``count`` now: they would have been chosen, had they finished in time.
    One joins while its runs fit in the time left, counting the runs queued or running before it as long as its
    own, ``parallel`` at a time (a run cut by the timeout is time lost; seen on MNIST: a trial finishing in the
    reserve with validation 0.992, test 0.992, was left out while the finalists' winner tested 0.986). Without a
    timeout nothing runs when they are chosen: none comes late."""
    if time_left is None:
        return []
    ahead = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
    joined = []
    for t in candidates(trials, config.finalists, maximize):
        cid = schema.config_id(t.number, t.user_attrs)
        if cid in chosen:
            continue
        rounds = math.ceil((ahead + config.finalist_seeds) / max(1, config.parallel))
        if rounds * trial_seconds(t) <= time_left:
            joined.append(t)
            ahead += config.finalist_seeds
    return joined


def admit_late(study: optuna.Study, config: SweepConfig, trials: list[FrozenTrial], time_left: float | None) -> list[int]:
    """Queue the runs of the late joiners once the finalists were chosen (the caller holds the launch lock); the
    configurations that joined."""
    chosen = study.user_attrs.get(schema.FINALISTS_ATTR)
    if config.finalists <= 0 or chosen is None or chosen.get("pending"):
        return []
    late = late_joiners(trials, config, chosen["configs"], schema.maximize(study), time_left)
    if not late:
        return []
    _queue_runs(study, config, late)
    cids = [schema.config_id(t.number, t.user_attrs) for t in late]
    study.set_user_attr(schema.FINALISTS_ATTR, {**chosen, "configs": chosen["configs"] + cids,
                                                "late": chosen.get("late", []) + cids})
    return cids


def _queue_runs(study: optuna.Study, config: SweepConfig, chosen: list[FrozenTrial]) -> None:
    for t in chosen:
        for _ in range(config.finalist_seeds):
            study.enqueue_trial(dict(t.params), user_attrs={schema.FINALIST_OF: schema.config_id(t.number, t.user_attrs)},
                                skip_if_exists=False)


def reserve_seconds(config: SweepConfig, durations: list[float], trials: list[FrozenTrial], maximize: bool) -> float:
    """Time kept free at the end of a timeout for the finalists: one more trial for those running when it begins
    (the upper quartile of the complete trials' seconds), then the finalists' runs, ``parallel`` at a time, each
    as long as the slowest of the configurations that would be chosen now (``durations``' longest while too few
    completed; 0 before any did). The finalists are queued once the reserve begins, from the trials complete by
    then. Measured (20-minute MNIST sweeps, 2 slots): with the median trial for both parts, the running trials
    (TPE's later picks are the slower, deeper nets) and the winning configuration (324 s against a median of
    191 s) overran it, and no finalist finished."""
    if config.finalists <= 0 or not durations or config.timeout is None:
        return 0.0
    rounds = math.ceil(config.finalists * config.finalist_seeds / max(1, config.parallel))
    trial = statistics.quantiles(durations, n=4, method="inclusive")[2] if len(durations) > 1 else durations[0]
    chosen = [trial_seconds(t) for t in candidates(trials, config.finalists, maximize)]
    return trial + rounds * max(chosen or durations)
