"""PNG pictures of a run, for readers without TensorBoard and for TensorBoard's image tab.

matplotlib's object API (`Figure`, no pyplot) for the chart and Pillow for the labelled
tiles, so no display or global state is touched.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any, Sequence

import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

ACCURACY_CHART = "accuracy.png"

# Tiles are at least this many pixels on their longer side: 8x8 digits become 96x96,
# 32x32 CIFAR images 96x96, both upscaled without blurring (nearest neighbour).
MIN_TILE = 96
MARGIN = 8  # Pixels around each tile and between a tile and its caption.
CAPTION_FONT_SIZE = 15


# Sized for a TensorBoard image card (about 340 px wide) at `CARD_DPI`, so that it is
# shown at its own size there; the work directory's copy is drawn at `FILE_DPI`.
CHART_WIDTH = 3.4
CARD_DPI = 100
FILE_DPI = 160


def accuracy_chart_png(
    generations: Sequence[dict[str, Any]], best_generation: int, dpi: int = CARD_DPI
) -> bytes:
    """Validation and test accuracy by generation, the best generation marked, as PNG bytes.

    Each point is labelled with its value, and the x axis has one tick per generation,
    so the chart reads the same at any size (no smoothing, no fractional generations).
    """
    steps = [g["generation"] for g in generations]
    figure = Figure(figsize=(CHART_WIDTH, 2.6), layout="constrained")
    axes = figure.add_subplot()
    for key, label in (("val_accuracy", "validation"), ("test_accuracy", "test")):
        _plot_labelled(axes, steps, [g[key] for g in generations], label, "{:.4f}")
    best = next(g for g in generations if g["generation"] == best_generation)
    axes.plot(
        [best_generation],
        [best["val_accuracy"]],
        marker="*",
        markersize=12,
        linestyle="none",
        color="gold",
        markeredgecolor="black",
        label=f"best (gen {best_generation})",
    )
    _finish(axes, steps, "accuracy", "Accuracy by generation")
    return _png(figure, dpi)


def accuracy_chart(
    generations: Sequence[dict[str, Any]], best_generation: int, path: str | os.PathLike
) -> None:
    """`accuracy_chart_png`, written to `path` at a higher resolution."""
    with open(path, "wb") as file:
        file.write(accuracy_chart_png(generations, best_generation, dpi=FILE_DPI))


def label_chart_png(
    steps: Sequence[int],
    panels: Sequence[tuple[str, dict[str, Sequence[float | None]]]],
    dpi: int = CARD_DPI,
) -> bytes:
    """Panels stacked in one column, each `(title, {series name: values by step})`, every
    point labelled with its value: the label figures, exact at any TensorBoard setting."""
    figure = Figure(figsize=(CHART_WIDTH, 1.9 * len(panels)), layout="constrained")
    for index, (title, series) in enumerate(panels, start=1):
        axes = figure.add_subplot(len(panels), 1, index)
        for name, values in series.items():
            known = [(s, v) for s, v in zip(steps, values) if v is not None]
            if known:
                _plot_labelled(axes, *zip(*known), name, "{:.3g}")
        _finish(axes, list(steps), None, title, legend=len(series) > 1)
    axes.set_xlabel("generation that trains on the labels", fontsize=7)
    return _png(figure, dpi)


def _plot_labelled(axes, steps, values, label: str, form: str) -> None:
    axes.plot(steps, values, marker="o", markersize=4, label=label)
    for step, value in zip(steps, values):
        axes.annotate(
            form.format(value), (step, value), textcoords="offset points", xytext=(0, 4),
            ha="center", fontsize=6,
        )


def _finish(axes, steps, ylabel: str | None, title: str, legend: bool = True) -> None:
    axes.set_xticks(steps)
    axes.set_xlim(min(steps) - 0.3, max(steps) + 0.3)
    axes.margins(y=0.25)
    axes.tick_params(labelsize=7)
    if ylabel:
        axes.set_ylabel(ylabel, fontsize=7)
        axes.set_xlabel("generation", fontsize=7)
    axes.set_title(title, fontsize=8)
    axes.grid(alpha=0.3)
    if legend:
        axes.legend(fontsize=6)


def _png(figure: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def upscale(image: np.ndarray, min_size: int = MIN_TILE) -> np.ndarray:
    """`image` `[H, W, C]` repeated by a whole factor so its longer side is >= `min_size`.

    Pixel repetition is nearest-neighbour scaling: each source pixel stays a sharp
    square, rather than the blur a browser or matplotlib would interpolate.
    """
    factor = max(1, math.ceil(min_size / max(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def labelled_tiles(images: np.ndarray, captions: Sequence[str]) -> bytes:
    """PNG bytes of uint8 images `[n, H, W, C]` stacked in one column, each with its caption
    (lines of text) to its right.

    One column keeps the picture narrow (about 330 px for digits and CIFAR), which is
    about the width TensorBoard shows an image card at, so it is shown at its own size
    and the captions stay legible.
    """
    font = _caption_font()
    tiles = [upscale(np.asarray(image, np.uint8)) for image in images]
    line_height = round(CAPTION_FONT_SIZE * 1.3)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(
        (measure.textlength(line, font=font) for caption in captions for line in caption.splitlines()),
        default=0,
    )
    tile_width = max(tile.shape[1] for tile in tiles)
    row_heights = [
        max(tile.shape[0], line_height * len(caption.splitlines()))
        for tile, caption in zip(tiles, captions)
    ]
    gap = MARGIN
    width = gap + tile_width + gap + math.ceil(text_width) + gap
    height = gap + sum(h + gap for h in row_heights)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    top = gap
    for tile, caption, row_height in zip(tiles, captions, row_heights):
        if tile.shape[-1] == 1:
            tile = np.repeat(tile, 3, axis=-1)
        canvas.paste(Image.fromarray(tile), (gap, top))
        for index, line in enumerate(caption.splitlines()):
            draw.text((2 * gap + tile_width, top + index * line_height), line, fill="black", font=font)
        top += row_height + gap
        draw.line([(0, top - gap // 2), (width, top - gap // 2)], fill=(210, 210, 210))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _caption_font() -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib ships, so the captions look the same everywhere."""
    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
    return ImageFont.truetype(path, CAPTION_FONT_SIZE)
