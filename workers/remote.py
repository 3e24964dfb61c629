"""The Ray side of a trial: a long-lived trainer per slot and the report broker.

``TrainerWorker`` imports TensorFlow once, when its process starts, and then
trains one trial after another with a cleared Keras session between them, so
no trial pays the 4-8 s import (DESIGN principle 4). ``ReportBroker`` relays
per-epoch reports to the coordinator and its answers back; workers never
touch the study storage (principle 1).
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import socket
from typing import Any

from workers import attempt
from workers.spec import Decision, EpochReport, TrialResult, TrialSpec


class ReportBroker:
    """An async Ray actor: workers await a decision; the coordinator drains reports and decides.

    ``report`` blocks the reporting worker until ``decide`` answers for that
    (trial, epoch); ``release`` answers PRUNE to whatever a trial still waits on.
    """

    def __init__(self) -> None:
        self._pending: list[EpochReport] = []
        self._waiting: dict[tuple[int, int], asyncio.Future[Decision]] = {}
        self._arrived = asyncio.Event()

    async def report(self, report: EpochReport) -> Decision:
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting[(report.number, report.epoch)] = future
        self._pending.append(report)
        self._arrived.set()
        return await future

    async def drain(self, timeout: float) -> list[EpochReport]:
        if not self._pending:
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        out, self._pending = self._pending, []
        self._arrived.clear()
        return out

    async def decide(self, number: int, epoch: int, decision: Decision) -> None:
        future = self._waiting.pop((number, epoch), None)
        if future is not None and not future.done():
            future.set_result(decision)

    async def release(self, number: int) -> None:
        for key in [k for k in self._waiting if k[0] == number]:
            await self.decide(*key, Decision.PRUNE)


class BrokerReporter:
    """The worker's Reporter: one blocking round trip to the broker per epoch."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def report(self, report: EpochReport) -> Decision:
        import ray

        return ray.get(self.broker.report.remote(report))


class TrainerWorker:
    """One trial slot (a Ray actor): TensorFlow imported once, a cleared session per trial."""

    def __init__(self, threads: int = 1) -> None:
        self._info: dict[str, Any] | None = None
        if os.environ.get("KERAS_BACKEND", "tensorflow") == "jax":     # set for this process by the coordinator
            import jax
            import keras  # noqa: F401  (imported now, not in the first trial)

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            self.device = str(gpus[0]) if gpus else "CPU"
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")   # retracing notices between trials are expected here
        from workers.trainer import configure_threads

        configure_threads(threads)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
        import keras  # noqa: F401  (imported now, not in the first trial)

        devices = [d.name for d in tf.config.list_logical_devices()]
        gpus = [d for d in devices if ":GPU:" in d]
        self.device = gpus[0] if gpus else "CPU"

    def info(self) -> dict[str, Any]:
        """Where trials run: stored on each trial (user attrs node, node_ip, host, device)."""
        if self._info is None:
            import ray

            node = ray.get_runtime_context().get_node_id()
            ip = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node), "")
            import keras

            self._info = {"node": node, "node_ip": ip, "host": socket.gethostname(), "worker_pid": os.getpid(),
                          "device": self.device, "python": platform.python_version(),
                          "backend": keras.backend.backend()}
        return dict(self._info)

    def train(self, spec: TrialSpec, data: Any, broker: Any) -> TrialResult:
        from workers.trainer import train_trial

        try:
            result, source = attempt.run(train_trial, spec, data, BrokerReporter(broker))
            if result.failure is None:
                result.metrics.update(self.info(), data_source=source)
            return result
        finally:
            import keras

            keras.backend.clear_session()
            gc.collect()
