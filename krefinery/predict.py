"""Classify image files with an exported SavedModel alone: no krefinery model code, no weights file.

Images are decoded to the signature's channel count (`tf.io.decode_image` turns RGB
into grey and back); their size must already be the training size, because resizing
would show the model images unlike any it was trained on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from krefinery.diagnostics import top_classes
from krefinery.errors import UserError
from krefinery.export import INPUT_NAME, SIGNATURE, resolve_model_path


def load_serving(model: str | os.PathLike) -> tuple[tf.Module, list[str], tuple[int, int, int]]:
    """The loaded export (call `.signatures["serving_default"]`), class names and image shape.

    The loaded object is returned, not just its signature, because the signature's
    variables are only kept alive by it.
    """
    path = resolve_model_path(model)
    try:
        loaded = tf.saved_model.load(os.fspath(path))
    except (OSError, ValueError, tf.errors.OpError) as error:
        reason = str(error).splitlines()[0]
        raise UserError(f"--model={model}: cannot load the SavedModel in {path}: {reason}") from None
    serve = loaded.signatures.get(SIGNATURE)
    spec = serve.structured_input_signature[1].get(INPUT_NAME) if serve is not None else None
    ours = spec is not None and spec.dtype == tf.uint8 and spec.shape.rank == 4
    if not ours or not hasattr(loaded, "class_names"):
        raise UserError(
            f"--model={model}: {path} is a SavedModel, but not a krefinery export "
            f"(no {SIGNATURE} signature taking uint8 {INPUT_NAME})."
        )
    names = [name.decode() for name in loaded.class_names.numpy()]
    return loaded, names, tuple(spec.shape[1:])


def read_image(filename: str | os.PathLike, image_shape: Sequence[int]) -> np.ndarray:
    """One image file as uint8 `[H, W, C]` of `image_shape`, or one clear `UserError`."""
    height, width, channels = image_shape
    try:
        data = tf.io.read_file(os.fspath(filename))
    except tf.errors.OpError:
        raise UserError(f"{filename}: no such image file.") from None
    try:
        image = tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False)
    except (tf.errors.OpError, ValueError):
        raise UserError(f"{filename}: cannot decode as an image (png, jpeg, gif or bmp).") from None
    if tuple(image.shape[:2]) != (height, width):
        raise UserError(
            f"{filename} is {image.shape[1]}x{image.shape[0]} pixels; the model takes "
            f"{width}x{height} images, the size it was trained on."
        )
    return image.numpy()


Prediction = tuple[str, list[tuple[str, float]]]  # (file, [(class name, probability), ...])


def predict_files(
    model: str | os.PathLike, filenames: Sequence[str], top_k: int = 3
) -> list[Prediction]:
    """The `top_k` classes, with probabilities, of each image file, in order."""
    if not filenames:
        raise UserError(
            "--predict needs image files to classify: python run.py --predict --model=PATH IMAGE ..."
        )
    loaded, names, shape = load_serving(model)
    images = np.stack([read_image(name, shape) for name in filenames])
    outputs = loaded.signatures[SIGNATURE](**{INPUT_NAME: tf.constant(images)})
    probabilities = outputs["probabilities"].numpy()
    return [
        (name, [(names[c], p) for c, p in top_classes(row, min(top_k, len(names)))])
        for name, row in zip(filenames, probabilities)
    ]


def format_predictions(predictions: list[Prediction]) -> str:
    """One line per image: `file: class (p), class (p), ...`."""
    return "\n".join(
        f"{Path(name)}: " + ", ".join(f"{label} ({p:.4f})" for label, p in top)
        for name, top in predictions
    )
