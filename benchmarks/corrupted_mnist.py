"""A harder 28x28 dataset made from the 5,000 MNIST images, for checking the shipped sweep beyond MNIST-5k.

    .venv/bin/python benchmarks/corrupted_mnist.py            # writes benchmarks/out/corrupted_mnist.npz
    .venv/bin/python benchmarks/search_quality.py --dataset benchmarks/out/corrupted_mnist.npz --seeds 0 --minutes 15

No second image dataset can be downloaded here (``../shared/STACK.md``), and on MNIST-5k itself every
configuration of the shipped space lands within the validation noise of the others. This one applies
corruptions in the manner of MNIST-C (Mu and Gilmer, 2019) to every image, seeded: lowered contrast over a
grey background, Gaussian noise, 1-3 clutter strokes as bright as the digit, and on a third of the images an
occluding square. The digit stays readable to a person, but a small CNN's accuracy falls to about 0.9, and
its configurations differ by more than a 1,001-image validation set's noise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _stroke(img: np.ndarray, rng: np.random.Generator) -> None:
    """A straight line 2 pixels wide, from one random point to another, at the digit's own brightness."""
    (r0, c0), (r1, c1) = rng.uniform(0, 27, size=(2, 2))
    value = rng.uniform(0.6, 1.0)
    for t in np.linspace(0.0, 1.0, 60):
        r, c = int(round(r0 + t * (r1 - r0))), int(round(c0 + t * (c1 - c0)))
        img[max(0, r - 1):r + 1, max(0, c - 1):c + 1] = np.maximum(img[max(0, r - 1):r + 1, max(0, c - 1):c + 1],
                                                                   value)


def corrupt(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """``x``: images in [0, 1], shape (n, 28, 28); the corrupted copies as uint8."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(x)
    for i, image in enumerate(x):
        img = image.copy()
        for _ in range(rng.integers(1, 4)):
            _stroke(img, rng)
        if rng.random() < 1 / 3:
            size = int(rng.integers(7, 11))
            r, c = rng.integers(0, 28 - size, size=2)
            img[r:r + size, c:c + size] = rng.uniform(0.0, 1.0)
        background, contrast = rng.uniform(0.0, 0.3), rng.uniform(0.4, 1.0)
        img = background + contrast * img + rng.normal(0.0, 0.2, size=img.shape)
        out[i] = np.clip(img, 0.0, 1.0)
    return (out * 255).round().astype("uint8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "corrupted_mnist.npz"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from workers.sources import mnist

    x, y, _ = mnist()
    images = corrupt(x[..., 0], args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x_train=images, y_train=y)
    print(f"{args.out}: {len(images)} images, 28x28, {len(set(y.tolist()))} classes")


if __name__ == "__main__":
    main()
