"""The Ray dispatcher: one long-lived trainer actor per slot, and a broker that relays reports and answers.

Everything the coordinator knows of Ray is here: starting or joining Ray,
checking that the cluster has the resources a trial asks for, the worker
processes' environment (the Keras backend), and how Ray's exceptions map to
typed failures (a lost worker is replaced by a fresh one). Ray is imported
when the dispatcher starts, not when this module is.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sweeps.config import SweepConfig
from sweeps.errors import SweepsError, first_line
from workers import attempt
from workers.remote import ReportBroker, TrainerWorker
from workers.spec import Decision, EpochReport, Failure, TrialResult, TrialSpec


class RayDispatcher:
    """Trials on Ray actors with the config's ``resources``, on a private local Ray or the cluster at ``address``.

    ``worker`` is the actor class of a slot: ``TrainerWorker``, or, for the
    orchestration benchmarks, one with the same ``train(spec, data, broker)``
    that sleeps instead of training.
    """

    def __init__(self, config: SweepConfig, address: str | None = None, *, worker: type = TrainerWorker) -> None:
        check_address(address)              # before the caller writes anything
        self.config = config
        self.address = address
        self.worker = worker
        self.threads = config.threads
        self.actor: Any = None             # the slot actor class, with its resources
        self.broker: Any = None
        self.data: Any = None              # the object-store reference every trial reads
        self.free: list[Any] = []          # idle slot actors
        self.in_flight: dict[Any, tuple[int, Any]] = {}     # result ref -> (trial number, actor)
        self.drain: Any = None             # the broker's pending batch of reports
        self.stopped: set[int] = set()     # trials stop_all answered for: their late reports are dropped

    def start(self, slots: int, data: Any) -> None:
        import ray

        start_ray(self.address, self.config.backend)
        check_resources(self.config)
        self.broker = ray.remote(num_cpus=0)(ReportBroker).remote()
        self.actor = ray.remote(self.worker).options(num_cpus=self.config.cpus, num_gpus=self.config.gpus,
                                                     max_restarts=0, **worker_env(self.config.backend))
        self.free = [self.actor.remote(self.threads) for _ in range(slots)]
        self.data = ray.put(data)

    def idle(self) -> int:
        return len(self.free)

    def launch(self, spec: TrialSpec) -> None:
        actor = self.free.pop()
        self.in_flight[actor.train.remote(spec, self.data, self.broker)] = (spec.number, actor)

    def poll(self, timeout: float) -> tuple[list[EpochReport], list[TrialResult]]:
        """Wake on whichever comes first: an epoch report, a finished trial, or ``timeout``."""
        import ray

        if self.drain is None:
            self.drain = self.broker.drain.remote(timeout)
        ready, _ = ray.wait([self.drain, *self.in_flight], num_returns=1)
        reports: list[EpochReport] = []
        if self.drain in ready or ray.wait([self.drain], timeout=0)[0]:
            reports, self.drain = [r for r in ray.get(self.drain) if r.number not in self.stopped], None
        done = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=0)[0] if self.in_flight else []
        return reports, [self._result(ref) for ref in done]

    def _result(self, ref: Any) -> TrialResult:
        """A finished trial's result; a lost or broken worker becomes a failed one, and its slot a fresh actor."""
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        number, actor = self.in_flight.pop(ref)
        try:
            result: TrialResult = ray.get(ref)
        except RayActorError as e:
            result = attempt.failed(number, f"worker lost: {first_line(e)}", Failure.WORKER_LOST)
            actor = self.actor.remote(self.threads)
        except RayTaskError as e:
            result = attempt.failed(number, f"worker error: {first_line(e)}", Failure.ERROR)
        except RayError as e:   # out of memory, node lost, object lost
            result = attempt.failed(number, f"worker lost: {first_line(e)}", Failure.WORKER_LOST)
            ray.kill(actor)
            actor = self.actor.remote(self.threads)
        self.broker.release.remote(number)
        self.free.append(actor)
        return result

    def decide(self, number: int, epoch: int, decision: Decision) -> None:
        self.broker.decide.remote(number, epoch, decision)

    def stop(self, number: int, reason: str, failure: Failure) -> TrialResult | None:
        """Kill the trial's process (a stopped or hung one too) and put a fresh slot actor in its place."""
        import ray

        ref = next((r for r, (n, _) in self.in_flight.items() if n == number), None)
        if ref is None:
            return None
        _, actor = self.in_flight.pop(ref)
        ray.kill(actor)
        self.stopped.add(number)
        self.broker.release.remote(number)
        self.free.append(self.actor.remote(self.threads))
        return attempt.failed(number, reason, failure)

    def stop_all(self, reason: str, failure: Failure) -> list[TrialResult]:
        import ray

        stopped = []
        for number, actor in self.in_flight.values():
            ray.kill(actor)
            self.stopped.add(number)
            self.broker.release.remote(number)
            stopped.append(attempt.failed(number, reason, failure))
        self.in_flight.clear()
        return stopped

    def close(self) -> None:
        import ray

        ray.shutdown()


def worker_env(backend: str) -> dict[str, Any]:
    """Ray actor options that start a trial slot's process on the configured Keras backend.

    JAX allocates GPU memory as it needs it (not 75 % up front), so packed
    trials share a GPU the way TensorFlow's memory growth lets them.
    """
    if backend == "tensorflow":
        return {}
    return {"runtime_env": {"env_vars": {"KERAS_BACKEND": backend, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}}}


def start_ray(address: str | None, backend: str = "tensorflow") -> None:
    """A private local Ray on loopback, or the cluster at ``address``."""
    import ray

    module, name, extra = {"tensorflow": ("tensorflow", "TensorFlow", "'sweeps[tf]' (or 'sweeps[gpu]')"),
                           "jax": ("jax", "JAX", "'sweeps[jax]'")}[backend]
    if not address and (importlib.util.find_spec(module) is None or importlib.util.find_spec("keras") is None):
        raise SweepsError(f"{name} is not installed here, and the local Ray workers need it to train: "
                          f"pip install {extra}, or send trials to a cluster that has it with --ray-address")

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")   # no usage reports home (and a second faster start)
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False,
                              "configure_logging": True}
    try:
        if address and address.startswith("ray://"):
            client_init(address, kwargs)
        elif address:
            ray.init(address=address, **kwargs)
        else:
            with without_credentials():       # the local Ray's processes, and so every trial, start without them
                ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local Ray instance"
        raise SweepsError(f"cannot start or reach Ray at {where}: {reason(e)}; check --ray-address "
                          "or leave it out for a local Ray") from None


CLIENT_TRIES = 2


def client_init(address: str, kwargs: dict[str, Any]) -> None:
    """Ray Client, tried again when the head's proxy could not start this driver's server process in time.

    The proxy starts one server process per client and gives it 30 s to
    answer; on a busy head that start fails now and then, and a second one
    succeeds (seen in CI while trials trained on the same two cores).
    """
    import ray

    for attempt_no in range(1, CLIENT_TRIES + 1):
        try:
            ray.init(address=address, **kwargs)
            return
        except ConnectionAbortedError:      # "Initialization failure from server": the head answered, then failed
            ray.shutdown()
            if attempt_no == CLIENT_TRIES:
                raise
            time.sleep(2 * attempt_no)


def reason(e: BaseException) -> str:
    """The line that says why: Ray Client's init failures carry the head's traceback, whose last line does."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Initialization failure from server"):
        return f"{lines[0]} {lines[-1]}"
    return first_line(e)


def check_address(address: str | None) -> None:
    """A GCS address (host:port) is only for a machine that runs a node of that cluster: say so in one line."""
    if address and not address.startswith("ray://") and not runs_a_node_of(address):
        host = address.rsplit(":", 1)[0]
        raise SweepsError(f"this machine runs no Ray node of the cluster at {address}, and a driver connecting by that "
                          f"address needs one: use Ray Client, --ray-address ray://{host}:10001 (the head's "
                          f"--ray-client-server-port), or join the cluster here first with `ray start "
                          f"--address={address} --num-cpus=0`")


def runs_a_node_of(address: str) -> bool:
    """Whether a driver here can join the cluster whose GCS is at ``address`` (host:port): its host is this
    machine, or a raylet of that cluster runs here. Ray aborts the process with a native stack trace
    otherwise. Where processes cannot be listed (no /proc), assume it can."""
    host, _, port = address.rpartition(":")
    try:
        ip = socket.gethostbyname(host or "127.0.0.1")
        with socket.socket() as s:
            s.bind((ip, 0))                  # binds only to an address of this machine
        return True
    except OSError:
        pass
    if not os.path.isdir("/proc/self"):
        return True
    wanted = f"--gcs-address={ip}:{port}".encode()
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:                      # not a process, or gone
            continue
        if args and args[0].endswith(b"raylet") and wanted in args:
            return True
    return False


CREDENTIALS = ("SWEEPS_STORAGE", "PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE")


def is_credential(name: str) -> bool:
    """Environment variables that trial workers never need: the storage URL, database and cloud credentials."""
    upper = name.upper()
    return (upper in CREDENTIALS or upper.startswith("AWS_")
            or (("PASSWORD" in upper or "SECRET" in upper) and not upper.startswith("RAY_")))


@contextmanager
def without_credentials() -> Iterator[None]:
    """This process's environment without credentials while Ray's local processes start (they copy it)."""
    saved = {name: os.environ.pop(name) for name in list(os.environ) if is_credential(name)}
    try:
        yield
    finally:
        os.environ.update(saved)


def check_resources(config: SweepConfig) -> None:
    """The cluster must hold ``parallel`` trials of ``resources`` each, or the sweep would wait forever."""
    import ray

    have = ray.cluster_resources()
    cpus, gpus = config.cpus, config.gpus
    if gpus > 0 and have.get("GPU", 0) < gpus:
        raise SweepsError(f"resources.gpus is {gpus:g} but the Ray cluster has {have.get('GPU', 0):g} GPUs; "
                          "set resources.gpus: 0 or connect to a cluster with GPUs (--ray-address)")
    need = config.parallel * cpus
    if have.get("CPU", 0) < need:
        raise SweepsError(f"parallel {config.parallel} x resources.cpus {cpus:g} needs {need:g} CPUs but the "
                          f"Ray cluster has {have.get('CPU', 0):g}; lower parallel or resources.cpus")
