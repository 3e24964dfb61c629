"""Issue 3's chaos run: a 30-trial sweep on PostgreSQL that survives 5 coordinator kills and 3 worker kills.

    .venv/bin/python benchmarks/chaos.py [--seed 0] [--n-trials 30] [--coordinator-kills 5] [--worker-kills 3]

Creates a fresh database (through SWEEPS_TEST_PG_ADMIN, default the local
trust-auth server) and runs `sweeps run` as a separate process. At random
moments (seeded) it kill -9s the coordinator together with the Ray processes
it started, as a lost machine would, and starts `sweeps resume` in a new
process from a new working directory; in between it kill -9s Ray trainer
processes in the middle of a trial. The last resume runs to the end. Then it
checks the study: exactly n_trials finished configurations, nothing RUNNING
or WAITING, and no configuration run twice except as a recorded retry. It
prints a Markdown summary for benchmarks/RESULTS.md and exits non-zero if a
check fails.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from sweeps.storage import driver_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))          # run as a script from benchmarks/: make tests.processes importable
from pgdb import fresh_database  # noqa: E402

from tests.processes import kill_tree, trainer_processes  # noqa: E402

TS = optuna.trial.TrialState

SPACE = {
    "study": "chaos",
    "dataset": "digits",
    "epochs": 8,
    "seed": 0,
    "sampler": "tpe",
    "pruner": {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 3},
    "parallel": 2,
    "recovery": {"heartbeat_interval": 2, "grace_period": 6},
    "parameters": {
        "learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True},
        "batch_size": {"values": [32, 64]},
        "optimizer": {"values": ["adam", "sgd"]},
        "momentum": {"low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}},
        "dropout": {"low": 0.0, "high": 0.4},
        "width": {"values": [16, 24]},
    },
}


def start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(cwd / "sweeps.log", "ab")  # noqa: SIM115  (the child process keeps it)
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)


def check(study: optuna.Study, n_trials: int) -> dict[str, object]:
    trials = study.get_trials()
    replaced = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    states = collections.Counter(t.state.name for t in trials)
    configs = collections.Counter(t.state.name for t in trials if not (t.state == TS.FAIL and t.number in replaced))
    finished = configs["COMPLETE"] + configs["PRUNED"] + configs["FAIL"]
    by_params: dict[str, list[optuna.trial.FrozenTrial]] = collections.defaultdict(list)
    for t in trials:
        by_params[json.dumps(t.params, sort_keys=True)].append(t)
    unrecorded = []        # same parameters, not linked as retries of one configuration
    for group in by_params.values():
        if len({t.user_attrs.get("config_id", t.number) for t in group}) > 1:
            unrecorded.append([t.number for t in group])
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    reasons = collections.Counter(
        study.get_trials()[t.user_attrs["retry_of"]].user_attrs.get("reason", "?").split(" (")[0].split(":")[0]
        for t in retries)
    return {
        "finished configurations": finished, "trials by state": dict(states), "configurations by state": dict(configs),
        "running": states["RUNNING"], "waiting": states["WAITING"], "unrecorded duplicates": unrecorded,
        "retries": len(retries), "retries by cause": dict(reasons),
        "retries resumed from a checkpoint (start epoch > 0)": sum(t.user_attrs.get("start_epoch", 0) > 0 for t in retries),
        "best value": study.best_value,
        "ok": finished == n_trials and states["RUNNING"] == 0 and states["WAITING"] == 0 and not unrecorded,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--coordinator-kills", type=int, default=5)
    parser.add_argument("--worker-kills", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    work = Path(tempfile.mkdtemp(prefix="sweeps-chaos-"))
    os.environ["XDG_DATA_HOME"] = str(work / "data")         # checkpoints of this run stay in its folder
    space = work / "chaos.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "budget": {"n_trials": args.n_trials}}, sort_keys=False))
    worker_kills_left, events = args.worker_kills, []
    started = time.monotonic()
    with fresh_database("sweeps_chaos") as url:
        for generation in range(args.coordinator_kills + 1):
            cwd = work / f"machine-{generation}"
            cwd.mkdir()
            cmd = ["run", str(space)] if generation == 0 else ["resume", "chaos"]
            proc = start([*cmd, "--storage", url], cwd)
            last = generation == args.coordinator_kills
            lifetime = None if last else rng.uniform(10, 30)
            worker_kill_at = None
            if worker_kills_left and (last or rng.random() < 0.5):
                worker_kill_at = rng.uniform(8, (lifetime or 20) - 1)
            born = time.monotonic()
            while proc.poll() is None:
                age = time.monotonic() - born
                if worker_kill_at is not None and age >= worker_kill_at:
                    victims = trainer_processes(proc)
                    if victims:
                        victim = rng.choice(victims)
                        victim.kill()
                        worker_kills_left -= 1
                        events.append(f"{time.monotonic() - started:.0f}s: killed Ray trainer pid {victim.pid}")
                        worker_kill_at = (age + rng.uniform(5, 10)) if (last and worker_kills_left) else None
                    else:
                        worker_kill_at = age + 1          # no trial training right now: try again shortly
                if lifetime is not None and age >= lifetime:
                    kill_tree(proc)
                    events.append(f"{time.monotonic() - started:.0f}s: killed coordinator pid {proc.pid} "
                                  f"(generation {generation}, after {age:.0f}s)")
                    break
                time.sleep(0.2)
            if last and proc.returncode != 0:
                print((cwd / "sweeps.log").read_text()[-3000:], file=sys.stderr)
                raise SystemExit(f"the final resume exited {proc.returncode}")
        wall = time.monotonic() - started
        result = check(optuna.load_study(study_name="chaos", storage=driver_url(url)), args.n_trials)
    command = " ".join(["benchmarks/chaos.py", f"--seed {args.seed}", f"--n-trials {args.n_trials}",
                        f"--coordinator-kills {args.coordinator_kills}", f"--worker-kills {args.worker_kills}"])
    print(f"### {datetime.date.today()}, {platform.node()} ({os.cpu_count()} cores): `.venv/bin/python {command}`\n")
    print(f"wall time {wall:.0f} s; coordinator kills {args.coordinator_kills}; "
          f"worker kills {args.worker_kills - worker_kills_left}\n")
    for key, value in result.items():
        print(f"- {key}: {value}")
    print("\nevents:\n" + "\n".join(f"- {e}" for e in events))
    return 0 if result["ok"] and worker_kills_left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
