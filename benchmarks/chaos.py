"""The chaos run: a 40-trial sweep on PostgreSQL that survives what a week on shared machines brings.

    sudo .venv/bin/python benchmarks/chaos.py [--seed 0] [--n-trials 40] [--coordinator-kills 5] [--worker-kills 3]
                                              [--pauses 1] [--stalls 1] [--corruptions 1] [--blackholes 1]

PostgreSQL runs as a throwaway cluster on another "host" (a network namespace on this machine, so its link
can be cut; needs root). `sweeps run` starts as a separate process, and at seeded random moments, one after
another, the run:
- kill -9s a coordinator with the Ray processes it started (a lost machine) and starts `sweeps resume` in a
  new process from a new working directory;
- kill -9s a Ray trainer process in the middle of a trial;
- pauses a coordinator (SIGSTOP) for longer than the grace period while a second one resumes the study, then
  lets it go on (SIGCONT): both run to the end on one budget;
- stops a trainer (SIGSTOP): its coordinator's stall limit replaces it;
- damages a stored checkpoint (flipped bytes): a retry that reads it falls back to the other slot;
- cuts the database's network for 8 s without closing anything: the coordinators ride it out.
Then every coordinator still alive runs to the end, and the study is checked: exactly n_trials finished
configurations, nothing RUNNING or WAITING, no configuration run twice except as a recorded retry. It prints a
Markdown summary for benchmarks/RESULTS.md and exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import yaml

from sweeps.storage import driver_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))          # run as a script from benchmarks/: make tests' helpers importable

from tests.netns import Netns  # noqa: E402
from tests.pgcluster import PgCluster  # noqa: E402
from tests.processes import kill_tree, trainer_processes  # noqa: E402

TS = optuna.trial.TrialState
GRACE = 6

SPACE = {
    "study": "chaos",
    "dataset": "digits",
    "epochs": 8,
    "seed": 0,
    "sampler": "tpe",
    "pruner": {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 3},
    "parallel": 2,
    "recovery": {"heartbeat_interval": 2, "grace_period": GRACE, "database_timeout": 60, "stall_timeout": 8},
    "parameters": {
        "learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True},
        "batch_size": {"values": [32, 64]},
        "optimizer": {"values": ["adam", "sgd"]},
        "momentum": {"low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}},
        "dropout": {"low": 0.0, "high": 0.4},
        "width": {"values": [16, 24]},
    },
}


class Run:
    """The coordinators alive, the events so far, and how to make more of both."""

    def __init__(self, work: Path, space: Path, url: str, rng: random.Random) -> None:
        self.work, self.space, self.url, self.rng = work, space, url, rng
        self.live: list[subprocess.Popen[bytes]] = []
        self.ended: list[subprocess.Popen[bytes]] = []     # ended by themselves (not killed)
        self.machines = 0
        self.events: list[str] = []
        self.started = time.monotonic()
        self.finished = False            # a coordinator met the budget: no more faults to make

    def say(self, event: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:.0f}s: {event}")

    def start(self) -> subprocess.Popen[bytes]:
        cwd = self.work / f"machine-{self.machines}"
        cwd.mkdir()
        args = ["run", str(self.space)] if self.machines == 0 else ["resume", "chaos"]
        self.machines += 1
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        log = open(cwd / "sweeps.log", "ab")  # noqa: SIM115  (the child process keeps it)
        proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args, "--storage", self.url], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.live.append(proc)
        return proc

    def reap(self) -> None:
        """Coordinators that ended by themselves leave the list; none alive means a new one starts."""
        for proc in [p for p in self.live if p.poll() is not None]:
            self.live.remove(proc)
            self.ended.append(proc)
            self.finished = self.finished or proc.returncode == 0
            self.say(f"coordinator pid {proc.pid} ended by itself (exit {proc.returncode})")
        if not self.live and not self.finished:
            self.start()

    def trainers(self) -> list[tuple[subprocess.Popen[bytes], psutil.Process]]:
        return [(p, t) for p in self.live for t in trainer_processes(p)]


def kill_coordinator(run: Run, netns: Netns) -> bool:
    victim = run.rng.choice(run.live)
    kill_tree(victim)
    run.live.remove(victim)
    run.say(f"killed coordinator pid {victim.pid} and its Ray (kill -9); a new one resumes")
    run.start()
    return True


def kill_worker(run: Run, netns: Netns) -> bool:
    found = run.trainers()
    if not found:
        return False
    _, victim = run.rng.choice(found)
    victim.kill()
    run.say(f"killed Ray trainer pid {victim.pid} (kill -9)")
    return True


def pause_coordinator(run: Run, netns: Netns) -> bool:
    victim = run.rng.choice(run.live)
    victim.send_signal(signal.SIGSTOP)
    other = run.start()
    run.say(f"paused coordinator pid {victim.pid} (SIGSTOP); pid {other.pid} resumes the study meanwhile")
    time.sleep(GRACE + 6)
    victim.send_signal(signal.SIGCONT)
    run.say(f"coordinator pid {victim.pid} goes on (SIGCONT) after {GRACE + 6}s")
    return True


def _running_by(run: Run) -> dict[int, list[optuna.trial.FrozenTrial]]:
    """The RUNNING trials of each live coordinator (by the pid in their `coordinator` attribute)."""
    study = optuna.load_study(study_name="chaos", storage=driver_url(run.url))
    owners: dict[int, list[optuna.trial.FrozenTrial]] = {p.pid: [] for p in run.live}
    for t in study.get_trials(deepcopy=False):
        pid = int(t.user_attrs.get("coordinator", ":0").rsplit(":", 1)[1])
        if t.state == TS.RUNNING and pid in owners:
            owners[pid].append(t)
    return owners


def stall_worker(run: Run, netns: Netns) -> bool:
    """A trainer of a coordinator whose running trials are all past their first epoch (whose report gets more
    time: it may import the framework and trace the model) stops."""
    owners = {p.pid: p for p in run.live}
    ready = [pid for pid, trials in _running_by(run).items()
             if trials and all(len(t.intermediate_values) >= 2 for t in trials)]
    found = [t for pid in ready for t in trainer_processes(owners[pid])]
    if not found:
        return False
    victim = run.rng.choice(found)
    victim.suspend()
    run.say(f"stopped Ray trainer pid {victim.pid} (SIGSTOP): a hung trial")
    stopped = time.monotonic()
    while victim.is_running() and victim.status() != psutil.STATUS_ZOMBIE and time.monotonic() - stopped < 60:
        time.sleep(0.5)
    gone = not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE
    run.say(f"the hung trainer was {'replaced' if gone else 'still there'} after {time.monotonic() - stopped:.0f}s")
    return True


def damage_checkpoint(run: Run, netns: Netns) -> bool:
    """The newest checkpoint slot of a running trial's configuration gets flipped bytes, then its coordinator's
    trainers are killed: the retry has to pass over the damaged slot."""
    owners = {p.pid: p for p in run.live}
    running = [t for trials in _running_by(run).values() for t in trials if len(t.intermediate_values) >= 2]
    if not running:
        return False
    trial = run.rng.choice(running)
    config = trial.user_attrs.get("config_id", trial.number)
    slots = sorted((run.work / "store").glob(f"chaos-*/config-{config}.*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not slots:
        return False
    blob = bytearray(slots[-1].read_bytes())
    for i in range(len(blob) // 2, min(len(blob), len(blob) // 2 + 64)):
        blob[i] ^= 0xFF
    slots[-1].write_bytes(bytes(blob))
    owner = owners[int(trial.user_attrs["coordinator"].rsplit(":", 1)[1])]
    victims = trainer_processes(owner)
    for victim in victims:
        victim.kill()
    run.say(f"damaged {slots[-1].name}, the newest checkpoint of trial {trial.number}, and killed its coordinator's "
            f"{len(victims)} trainer(s)")
    return True


def cut_network(run: Run, netns: Netns) -> bool:
    netns.cut()
    run.say("cut the database's network (packets vanish, nothing closed) for 8s")
    time.sleep(8)
    netns.mend()
    run.say("the database's network is back")
    return True


FAULTS = {"coordinator kills": kill_coordinator, "worker kills": kill_worker, "pauses": pause_coordinator,
          "stalls": stall_worker, "corruptions": damage_checkpoint, "blackholes": cut_network}


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
    causes = collections.Counter(trials[t.user_attrs["retry_of"]].user_attrs.get("failure", "?") for t in retries)
    notes = sum("checkpoint_note" in t.user_attrs for t in trials)
    return {
        "finished configurations": finished, "trials by state": dict(states), "configurations by state": dict(configs),
        "running": states["RUNNING"], "waiting": states["WAITING"], "unrecorded duplicates": unrecorded,
        "retries": len(retries), "retries by failure kind": dict(causes),
        "retries resumed from a checkpoint (start epoch > 0)": sum(t.user_attrs.get("start_epoch", 0) > 0 for t in retries),
        "retries that passed over a damaged checkpoint": notes,
        "best value": study.best_value,
        "ok": finished == n_trials and states["RUNNING"] == 0 and states["WAITING"] == 0 and not unrecorded,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-trials", type=int, default=40)
    counts = {"coordinator kills": 5, "worker kills": 3, "pauses": 1, "stalls": 1, "corruptions": 1, "blackholes": 1}
    for name, default in counts.items():
        parser.add_argument(f"--{name.replace(' ', '-')}", type=int, default=default)
    args = parser.parse_args()
    wanted = {name: getattr(args, name.replace(" ", "_")) for name in counts}
    rng = random.Random(args.seed)
    plan = [name for name, n in wanted.items() for _ in range(n)]
    rng.shuffle(plan)

    work = Path(tempfile.mkdtemp(prefix="sweeps-chaos-"))
    os.environ["XDG_DATA_HOME"] = str(work / "data")
    space = work / "chaos.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "budget": {"n_trials": args.n_trials},
                                     "checkpoints": {"store": str(work / "store")}}, sort_keys=False))
    netns = Netns()
    cluster = PgCluster(netns)
    done = collections.Counter[str]()
    try:
        cluster.start()
        run = Run(work, space, cluster.url, rng)
        run.start()
        for fault in plan:
            deadline = time.monotonic() + rng.uniform(5, 12)
            while not run.finished and (time.monotonic() < deadline or not FAULTS[fault](run, netns)):
                time.sleep(0.5)
                run.reap()
            if run.finished:
                break
            done[fault] += 1
            run.reap()
        for proc in run.live:                           # the rest run to the end
            proc.wait(timeout=1800)
            run.ended.append(proc)
            run.say(f"coordinator pid {proc.pid} ended (exit {proc.returncode})")
        wall = time.monotonic() - run.started
        result = check(optuna.load_study(study_name="chaos", storage=driver_url(cluster.url)), args.n_trials)
        exits = [p.returncode for p in run.ended]
    finally:
        netns.mend()
        cluster.destroy()
        netns.close()
    flags = " ".join(f"--{name.replace(' ', '-')} {n}" for name, n in wanted.items())
    print(f"### {datetime.date.today()}, {platform.node()} ({os.cpu_count()} cores): "
          f"`sudo .venv/bin/python benchmarks/chaos.py --seed {args.seed} --n-trials {args.n_trials} {flags}`\n")
    print(f"wall time {wall:.0f} s; faults made: " + ", ".join(f"{name} {done[name]}" for name in counts)
          + f"; exit codes of the coordinators that were not killed {exits}\n")
    for key, value in result.items():
        print(f"- {key}: {value}")
    print("\nevents:\n" + "\n".join(f"- {e}" for e in run.events))
    return 0 if result["ok"] and all(code == 0 for code in exits) and done == collections.Counter(wanted) else 1


if __name__ == "__main__":
    sys.exit(main())
