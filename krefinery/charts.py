"""PNG pictures of a run, for readers without TensorBoard and for TensorBoard's image tab.

matplotlib's object API (`Figure`, no pyplot), so no display or global state is touched.
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

ACCURACY_CHART = "accuracy.png"


def accuracy_chart(
    generations: Sequence[dict[str, Any]], best_generation: int, path: str | os.PathLike
) -> None:
    """Validation and test accuracy by generation, the best generation marked."""
    steps = [g["generation"] for g in generations]
    figure = Figure(figsize=(5.5, 3.5), layout="constrained")
    axes = figure.add_subplot()
    for key, label in (("val_accuracy", "validation"), ("test_accuracy", "test")):
        axes.plot(steps, [g[key] for g in generations], marker="o", label=label)
    best = next(g for g in generations if g["generation"] == best_generation)
    axes.plot(
        [best_generation],
        [best["val_accuracy"]],
        marker="*",
        markersize=16,
        linestyle="none",
        color="gold",
        markeredgecolor="black",
        label=f"best (generation {best_generation})",
    )
    axes.set_xticks(steps)
    axes.set_xlabel("generation")
    axes.set_ylabel("accuracy")
    axes.set_title("Accuracy by generation")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, format="png", dpi=100)


def captioned_grid(images: np.ndarray, captions: Sequence[str], columns: int = 4) -> bytes:
    """PNG bytes of uint8 images `[n, H, W, C]` in a grid, each with its caption above it."""
    count = len(images)
    rows = max(1, -(-count // columns))
    figure = Figure(figsize=(2.4 * columns, 2.9 * rows), layout="constrained")
    for index in range(rows * columns):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.axis("off")
        if index < count:
            image = images[index]
            if image.shape[-1] == 1:
                axes.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                axes.imshow(image, interpolation="nearest")
            axes.set_title(captions[index], fontsize=8, loc="left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()
