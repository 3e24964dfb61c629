"""Issue 5, benchmark 5: epoch time per architecture, precision and XLA, and trials packed per GPU.

    .venv/bin/python benchmarks/gpu.py epochs  [--backend jax] [--architectures simple_cnn,resnet,mobilenet_v2]
    .venv/bin/python benchmarks/gpu.py packing [--backend jax] [--packs 1,2,4,8]

Both parts run `sweeps run` as a user would (a local Ray, SQLite), on the MNIST-5k training split with
fixed parameters, so what they time is the whole trial path on the device:

- epochs: one trial per architecture and setting (float32; mixed precision; XLA; both: under the JAX
  backend every step is XLA-compiled, so only precision varies), the mean epoch time after the first
  (which pays for compiling), and the model FLOPs per second that implies: training FLOPs per image
  (3 x the forward pass, counted from the Conv2D, DepthwiseConv2D and Dense layers' shapes) x training
  images / epoch time, as a fraction of --peak-tflops (default: looked up from the GPU's name, the dense
  float16/bfloat16 tensor-core peak under mixed precision and the float32 peak without);
- packing: for each n in --packs, 2n trials with ``resources.gpus: 1/n`` and ``parallel: n``: trials per
  hour (wall time, start-up included) and the GPU's utilisation and memory, sampled with ``nvidia-smi``
  every second while the sweep runs.

Every row names the device (nvidia-smi's name, or "CPU"). On a machine without a GPU the trials ask for no
GPU and the utilisation columns are empty: that is how this script is checked on the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import threading
from typing import Any

import clisweep

DATASET = {"name": "mnist", "val_fraction": 0.2}
# Dense peak TFLOP/s of a whole GPU (NVIDIA's data sheets, SXM parts): (16-bit tensor core, float32).
PEAKS = {"H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3)}


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = out.stdout.strip().splitlines()
    return names[0].strip() if out.returncode == 0 and names else None


class GpuSampler:
    """nvidia-smi's utilisation and memory every second, in a thread, while a sweep runs."""

    def __init__(self) -> None:
        self.util: list[float] = []
        self.memory_mib: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True)
            except OSError:
                return            # no nvidia-smi: no GPU to sample
            if out.returncode == 0 and out.stdout.strip():
                util, memory = out.stdout.strip().splitlines()[0].split(",")
                self.util.append(float(util))
                self.memory_mib.append(float(memory))

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def base_space(backend: str, architecture: str, epochs: int, gpus: float) -> dict[str, Any]:
    return {
        "dataset": DATASET, "epochs": epochs, "seed": 0, "backend": backend,
        "sampler": {"name": "random"}, "pruner": {"name": "none"}, "budget": {"n_trials": 1}, "parallel": 1,
        "resources": {"cpus": 1, "gpus": gpus},
        "parameters": {"architecture": architecture, "learning_rate": 1e-3, "batch_size": 128, "optimizer": "adam"},
    }


def training_flops_per_image(architecture: str) -> float:
    """3 x the forward multiply-adds x 2 of the model's Conv2D, DepthwiseConv2D and Dense layers."""
    import keras

    from workers import models
    from workers.hyperparameters import DEFAULTS as PARAMETER_DEFAULTS

    model = models.build({**PARAMETER_DEFAULTS, "architecture": architecture}, (28, 28, 1), 10)

    def layers(m: Any) -> list[Any]:
        out = []
        for layer in m.layers:
            out.extend(layers(layer) if isinstance(layer, keras.Model) else [layer])
        return out

    forward = 0.0
    for layer in layers(model):
        shape = layer.output.shape
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            forward += 2 * kh * kw * shape[1] * shape[2] * shape[3]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = layer.kernel.shape[2]
            forward += 2 * kh * kw * cin * shape[1] * shape[2] * shape[3]
        elif isinstance(layer, keras.layers.Dense):
            forward += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return 3 * forward


def epochs_part(args: argparse.Namespace, device: str, gpus: float) -> None:
    settings = [(False, False), (True, False)] if args.backend == "jax" else \
        [(False, False), (True, False), (False, True), (True, True)]
    from workers import data

    images = len(data.load(DATASET, seed=0).x_train)      # the sweep's own split: what one epoch trains on
    peaks = next((v for k, v in PEAKS.items() if k in device), None) if args.peak_tflops is None else None
    print("| date | device | backend | architecture | mixed precision | XLA | s/epoch (after the first) "
          "| training GFLOP/image | TFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for architecture in args.architectures.split(","):
        flops = training_flops_per_image(architecture)
        for mixed, xla in settings:
            space = {**base_space(args.backend, architecture, args.epochs, gpus), "mixed_precision": mixed,
                     "jit_compile": xla}
            _, [trial] = clisweep.run({**space, "study": f"gpu-epochs-{architecture}"})
            seconds = statistics.mean(trial.user_attrs["epoch_seconds"][1:])
            rate = flops * images / seconds / 1e12
            peak = args.peak_tflops or (peaks[0 if mixed else 1] if peaks else None)
            share = f"{rate / peak:.2%}" if peak else "(no peak known)"
            print(f"| {datetime.date.today()} | {device} | {args.backend} | {architecture} | {mixed} "
                  f"| {'always' if args.backend == 'jax' else xla} | {seconds:.3f} | {flops / 1e9:.3f} | {rate:.4f} "
                  f"| {share} |", flush=True)


def packing_part(args: argparse.Namespace, device: str, has_gpu: bool) -> None:
    print("| date | device | backend | trials per GPU | trials | wall | trials per hour | mean GPU util "
          "| peak GPU memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in (int(p) for p in args.packs.split(",")):
        space = {**base_space(args.backend, args.architecture, args.epochs, 1 / n if has_gpu else 0),
                 "parallel": n, "budget": {"n_trials": 2 * n}, "mixed_precision": True}
        space["parameters"] = {**space["parameters"], "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}
        with GpuSampler() as sampler:
            wall, trials = clisweep.run({**space, "study": f"gpu-pack-{n}"})
        finished = sum(t.state.is_finished() for t in trials)
        util = f"{statistics.mean(sampler.util):.0f} %" if sampler.util else ""
        memory = f"{max(sampler.memory_mib):.0f} MiB" if sampler.memory_mib else ""
        print(f"| {datetime.date.today()} | {device} | {args.backend} | {n} | {finished} | {wall:.0f} s "
              f"| {finished / wall * 3600:.0f} | {util} | {memory} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["epochs", "packing"])
    parser.add_argument("--backend", default="jax", choices=["jax", "tensorflow"])
    parser.add_argument("--architectures", default="simple_cnn,resnet,mobilenet_v2", help="epochs: which")
    parser.add_argument("--architecture", default="simple_cnn", help="packing: which")
    parser.add_argument("--packs", default="1,2,4,8", help="packing: trials per GPU")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, if its name is not in PEAKS")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend          # the FLOP count builds the model here too
    name = gpu_name()
    device = name or f"CPU ({platform.node()}, {os.cpu_count()} cores)"
    if args.part == "epochs":
        epochs_part(args, device, 1 if name else 0)
    else:
        packing_part(args, device, name is not None)


if __name__ == "__main__":
    main()
