"""Random-resized crops (the Inception crop) and evaluation's centre crop, shared by both
input paths and the export.

Szegedy et al.'s crop, as torchvision's `RandomResizedCrop` draws it: a box of a random
share of the image's area (`--crop_area`, default 0.08 to 1) and a log-uniform aspect
ratio (`--crop_ratio`, default 3/4 to 4/3), placed uniformly; up to ten tries per image,
then the whole image. The box is resized back to the image's size by nearest-neighbour
sampling, so a crop is one gather of pixels (uint8 stays uint8) on the tf.data path and
on the device alike; torchvision resizes bilinearly, which is not done here.

Evaluation sees one fixed view instead (`centre_indices`): the central `--crop_center` of
each side, resized back the same way; torchvision evaluates ImageNet on a 224 centre crop
of an image resized to 256, a share of 0.875. Validation, test, offline relabelling and the
exported serving signature all use it, so a served image is classified as evaluated.

`boxes` is written against a NumPy-like module (`tf.experimental.numpy`, `keras.ops`,
`numpy`), so one formula serves tf.data, every Keras backend and the tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TRIES = 10
# Evaluation's view of an image: source rows and columns (`centre_indices`); None: whole.
View = tuple[np.ndarray, np.ndarray] | None


def boxes(
    xp: Any,
    area_draws: Any,
    ratio_draws: Any,
    place_draws: Any,
    image_hw: tuple[int, int],
    area: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[Any, Any, Any, Any]:
    """(top, left, height, width) of a crop per image, as floats holding whole numbers.

    `area_draws`, `ratio_draws`: uniform [0, 1) draws of shape `[n, TRIES]`;
    `place_draws`: `[n, 2]`. The first try whose box fits the image is taken; an image
    none of whose tries fits is taken whole."""
    height, width = image_hw
    shares = area[0] + area_draws * (area[1] - area[0])
    aspects = xp.exp(math.log(ratio[0]) + ratio_draws * (math.log(ratio[1]) - math.log(ratio[0])))
    pixels = shares * (height * width)
    widths = xp.floor(xp.sqrt(pixels * aspects) + 0.5)  # Rounded to whole pixels.
    heights = xp.floor(xp.sqrt(pixels / aspects) + 0.5)
    fits = (widths >= 1) & (heights >= 1) & (widths <= width) & (heights <= height)
    first = xp.argmax(xp.where(fits, 1.0, 0.0), axis=1)[:, None]
    found = xp.any(fits, axis=1)
    crop_h = xp.where(found, xp.take_along_axis(heights, first, axis=1)[:, 0], float(height))
    crop_w = xp.where(found, xp.take_along_axis(widths, first, axis=1)[:, 0], float(width))
    top = xp.floor(place_draws[:, 0] * (height - crop_h + 1))
    left = xp.floor(place_draws[:, 1] * (width - crop_w + 1))
    return top, left, crop_h, crop_w


def sample_at(xp: Any, start: Any, size: Any, length: int) -> Any:
    """`[n, length]` source indices that resize spans `[start, start + size)` to `length`
    pixels by nearest neighbour (each output pixel's centre mapped into the span)."""
    steps = xp.arange(0.5, length, 1.0)[None, :] * (size[:, None] / length)
    return xp.minimum(start[:, None] + xp.floor(steps), start[:, None] + size[:, None] - 1)


def centre_indices(image_hw: tuple[int, int], share: float) -> View:
    """Source rows `[H]` and columns `[W]` of evaluation's view: the centred box of `share`
    of each side (placed as torchvision's `CenterCrop` places it), resized back to the
    whole size by nearest neighbour; None where the view is the whole image."""
    if share >= 1:
        return None
    indices = []
    for length in image_hw:
        size = max(1.0, math.floor(length * share + 0.5))
        start = float(round((length - size) / 2))
        indices.append(sample_at(np, np.array([start]), np.array([size]), length)[0].astype(np.int32))
    return indices[0], indices[1]


def view(xp: Any, images: Any, indices: View) -> Any:
    """`images` `[n, H, W, C]` as `centre_indices` says (unchanged for None): two gathers."""
    if indices is None:
        return images
    rows, columns = indices
    return xp.take(xp.take(images, rows, axis=1), columns, axis=2)
