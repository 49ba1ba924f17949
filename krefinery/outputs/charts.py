"""PNG pictures of a run, for readers without TensorBoard and for TensorBoard's image cards.

TensorBoard's Time Series tab fits an image into a card of about 420x220 pixels (the
Images tab into one about 370 pixels wide), so the pictures here are drawn at about that
size and shape: shown at their own size, their text stays legible. matplotlib's object
API (`Figure`, no pyplot) draws the charts and Pillow the labelled tiles, so no display
or global state is touched.
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

CARD_SIZE = (4.2, 2.2)  # Inches; at CARD_DPI, 420x220 pixels.
# The axes' place in the card, as fractions of it: room for 7-point tick labels of up to
# six characters, the axis label and a 9-point title. Fixed rather than matplotlib's
# constrained layout, which measures every text first and doubled the cost of a chart.
AXES_BOX = {"left": 0.13, "right": 0.97, "bottom": 0.18, "top": 0.87}
CARD_DPI = 100
FILE_DPI = 160  # The work directory's accuracy.png: the same chart, sharper.

# Tiles are at least this many pixels on their longer side (8x8 digits become 64x64,
# 32x32 CIFAR images too), upscaled without blurring (nearest neighbour).
MIN_TILE = 64
MARGIN = 8  # Pixels around each cell, and between a tile and its caption.
CAPTION_FONT_SIZE = 13
COLUMNS = 4


def accuracy_chart_png(
    generations: Sequence[dict[str, Any]], best_generation: int, dpi: int = CARD_DPI
) -> bytes:
    """Validation and test accuracy by generation, the best generation marked, as PNG bytes.

    Each point is labelled with its value, and the x axis has one tick per generation,
    so the chart reads the same at any size (no smoothing, no fractional generations).
    """
    steps = [g["generation"] for g in generations]
    figure, axes = _card()
    validation, test = ([g[key] for g in generations] for key in ("val_accuracy", "test_accuracy"))
    # At each generation the higher value is labelled above its point, the lower below,
    # so two close values do not print over each other.
    higher = [v >= t for v, t in zip(validation, test)]
    _plot_labelled(axes, steps, validation, "validation", "{:.4f}", above=higher)
    _plot_labelled(axes, steps, test, "test", "{:.4f}", above=[not h for h in higher])
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
    _finish(axes, steps, "Accuracy by generation", "generation", legend=True)
    return _png(figure, dpi)


def accuracy_chart(
    generations: Sequence[dict[str, Any]], best_generation: int, path: str | os.PathLike
) -> None:
    """`accuracy_chart_png`, written to `path` at a higher resolution."""
    with open(path, "wb") as file:
        file.write(accuracy_chart_png(generations, best_generation, dpi=FILE_DPI))


def series_chart_png(
    steps: Sequence[int],
    title: str,
    series: dict[str, Sequence[float | None]],
    xlabel: str = "generation",
    dpi: int = CARD_DPI,
) -> bytes:
    """Lines `{name: value per step}` (None: no value at that step), every point labelled
    with its value, one tick per step: exact at any TensorBoard setting."""
    figure, axes = _card()
    for name, values in series.items():
        known = [(s, v) for s, v in zip(steps, values) if v is not None]
        if known:
            _plot_labelled(axes, *zip(*known), name, "{:.3g}")
    _finish(axes, list(steps), title, xlabel, legend=len(series) > 1)
    return _png(figure, dpi)


def _card() -> tuple[Figure, Any]:
    figure = Figure(figsize=CARD_SIZE)
    figure.subplots_adjust(**AXES_BOX)
    return figure, figure.add_subplot()


def _plot_labelled(axes, steps, values, label: str, form: str, above: Sequence[bool] | None = None) -> None:
    """A line whose points carry their values: above each point, or below where `above` says not."""
    axes.plot(steps, values, marker="o", markersize=4, label=label)
    for step, value, up in zip(steps, values, above or [True] * len(steps)):
        axes.annotate(
            form.format(value), (step, value), textcoords="offset points", xytext=(0, 4 if up else -5),
            ha="center", va="bottom" if up else "top", fontsize=7,
        )


def _finish(axes, steps, title: str, xlabel: str, legend: bool) -> None:
    axes.set_xticks(steps)
    axes.set_xlim(min(steps) - 0.3, max(steps) + 0.3)
    axes.margins(y=0.25)
    axes.tick_params(labelsize=7)
    axes.set_xlabel(xlabel, fontsize=7)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    if legend:
        axes.legend(fontsize=7)


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


def labelled_tiles(images: np.ndarray, captions: Sequence[str], columns: int = COLUMNS) -> bytes:
    """PNG bytes of uint8 images `[n, H, W, C]` in a grid, row by row, each upscaled
    (`upscale`) with its caption (lines of text) under it.

    With 8 digits or CIFAR images and two short caption lines this is about 440x230
    pixels: a Time Series image card's shape, so TensorBoard shows it at about its size.
    """
    font = _caption_font()
    tiles = [upscale(np.asarray(image, np.uint8)) for image in images]
    line_height = round(CAPTION_FONT_SIZE * 1.25)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(
        (measure.textlength(line, font=font) for caption in captions for line in caption.splitlines()),
        default=0,
    )
    lines = max((len(caption.splitlines()) for caption in captions), default=0)
    cell_width = max(max(tile.shape[1] for tile in tiles), math.ceil(text_width))
    cell_height = max(tile.shape[0] for tile in tiles) + MARGIN + lines * line_height
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    canvas = Image.new(
        "RGB",
        (MARGIN + columns * (cell_width + MARGIN), MARGIN + rows * (cell_height + MARGIN)),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for index, (tile, caption) in enumerate(zip(tiles, captions)):
        row, column = divmod(index, columns)
        left, top = MARGIN + column * (cell_width + MARGIN), MARGIN + row * (cell_height + MARGIN)
        if tile.shape[-1] == 1:
            tile = np.repeat(tile, 3, axis=-1)
        canvas.paste(Image.fromarray(tile), (left, top))
        text_top = top + tile.shape[0] + MARGIN
        for number, line in enumerate(caption.splitlines()):
            draw.text((left, text_top + number * line_height), line, fill="black", font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _caption_font() -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib ships, so the captions look the same everywhere."""
    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
    return ImageFont.truetype(path, CAPTION_FONT_SIZE)
