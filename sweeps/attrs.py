"""Every study and trial attribute key of a sweep, and which configuration a trial runs.

The home of these names; ``sweeps/study.py`` (the schema) re-exports them for
the read side. Kept apart so the pruner's modules can read trials without
importing the schema, which builds pruners (``algorithms``).
"""

from __future__ import annotations

from typing import Any

# -- study attributes ----------------------------------------------------------------------------
CONFIG_ATTR = "sweeps:config"     # the resolved config (SweepConfig.to_dict): all `resume` needs
DATASET_ATTR = "sweeps:dataset"   # the dataset reference, shape and class names
VERSION_ATTR = "sweeps:version"
UID_ATTR = "sweeps:uid"           # names the study's checkpoint folder, unique across databases
STORE_ERRORS_ATTR = "sweeps:store_errors"   # checkpoint writes that failed: {count, last}
FORK_ATTR = "sweeps:forked_from"  # `sweeps fork`: {study, trials copied}
RUNGS_ATTR = "sweeps:rungs"       # the pruner's rungs: {mode, rungs, correlation {epoch: rho}, trials, threshold, late}
FINALISTS_ATTR = "sweeps:finalists"   # {configs: [trial numbers], seeds, pending: still to choose, late: [joined
#                                       after]}: the configurations retrained
TEST_ATTR = "sweeps:test"         # `best --evaluate`'s last answer: {trial, test_accuracy, ...}

# -- trial attributes ----------------------------------------------------------------------------
SEED = "seed"                     # the seed the trial trained with (a retry keeps its configuration's)
FIXED_PARAMS = "fixed_params"     # parameters the space fixes (Optuna stores only searched ones)
COORDINATOR = "coordinator"       # host:pid of the coordinator that ran the trial
REASON = "reason"                 # why a trial was pruned or failed, in words
FAILURE = "failure"               # the kind of a failure (workers.spec.Failure), for code to read
EPOCHS_RUN = "epochs_run"
RETRY_OF = "retry_of"             # the trial this one repeats after a failure
CONFIG_ID = "config_id"           # the first trial of the configuration
ATTEMPT = "attempt"
FAULTS = "faults"                 # worker faults so far for this configuration (coordinator loss is not one)
START_EPOCH = "start_epoch"       # the checkpoint epoch a retry resumed from
CHECKPOINT_NOTE = "checkpoint_note"   # why a retry started earlier than its last checkpoint (a damaged slot)
FORKED_FROM = "forked_from"       # a trial copied from another study by `sweeps fork`: {study, trial}; no budget
PAUSED_AT = "paused_at"           # a PRUNED trial paused at this rung epoch (it may be continued)
CONTINUES = "continues"           # the paused trial this one continues from its rung checkpoint
AUDITED = "audited"               # the epoch the pruner would have stopped this trial at; it ran on
FINALIST_OF = "finalist_of"       # a finalist's retraining with another seed: the configuration's trial; no budget
ONE_CLASS = "one_class_epochs"    # epochs whose validation predictions were all one class: never pruned on


def config_id(number: int, user_attrs: dict[str, Any]) -> int:
    """The configuration a trial runs: its own number, or its first attempt's when it is a retry."""
    return int(user_attrs.get(CONFIG_ID, number))
