"""PNG images made in the control plane (matplotlib, no TensorFlow): confusion matrices for the dashboard and reports."""

from __future__ import annotations

from collections.abc import Sequence


def confusion_matrix_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str,
                         title: str = "confusion matrix") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix)
    n = len(m)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * n), dpi=100)
    try:
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(n), [str(c) for c in class_names][:n], rotation=90 if n > 12 else 0)
        ax.set_yticks(range(n), [str(c) for c in class_names][:n])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        high = m.max() / 2 if m.size else 0
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > high else "black")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
