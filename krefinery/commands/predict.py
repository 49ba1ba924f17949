"""Classify image files with an exported SavedModel alone: no krefinery model code, no weights file.

Files are read by the same rules as a training folder (`krefinery.data.images`): any format,
mode and size training reads, EXIF orientation applied, alpha dropped, grey copied to
RGB for an RGB model, and other sizes stretched to the model's, as training stretches
its odd-sized images; each resize is reported. The one refusal: a colour image for a
greyscale model, which would lose its colour without a word (grey stored as RGB is fine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from krefinery.analysis.diagnostics import top_classes
from krefinery.data import images
from krefinery.errors import UserError
from krefinery.outputs.export import INPUT_NAME, SIGNATURE, resolve_model_path


def load_serving(
    model: str | os.PathLike, on_note: Callable[[str], None] | None = None
) -> tuple[tf.Module, list[str], tuple[int, int, int]]:
    """The loaded export (call `.signatures["serving_default"]`), class names and image shape.

    The loaded object is returned, not just its signature, because the signature's
    variables are only kept alive by it. `on_note` hears of incomplete or damaged
    versions skipped.
    """
    path, skipped = resolve_model_path(model)
    if skipped and on_note is not None:
        # Versions with the same problem together: "incomplete version(s) 3, 2 (no ...)".
        problems: dict[str, list[str]] = {}
        for name, problem in skipped:
            problems.setdefault(problem, []).append(name)
        listed = []
        for problem, names in problems.items():
            kind, _, detail = problem.partition(": ")
            listed.append(f"{kind} version(s) {', '.join(names)} ({detail})")
        on_note(f"--model={model}: skipped {', '.join(listed)}; using version {path.name}.")
    try:
        loaded = tf.saved_model.load(os.fspath(path))
    # TensorFlow's checkpoint reader reports a cut variables file as an IndexError.
    except (OSError, ValueError, IndexError, tf.errors.OpError) as error:
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


def read_image(filename: str | os.PathLike, image_shape: Sequence[int]) -> tuple[np.ndarray, bool]:
    """One image file as uint8 `image_shape` and whether it was resized, or one `UserError`."""
    height, width, channels = image_shape
    try:
        header = images.read_header(filename)
        if channels == 1 and header.colour:
            rgb = images.read_pixels(filename, (height, width, 3))
            if not (np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2])):
                raise UserError(
                    f"{filename} has colour, but the model was trained on greyscale images; "
                    "convert it to grey first if that is what you mean."
                )
            return rgb[..., :1], header.size != (height, width)
        return images.read_pixels(filename, (height, width, channels)), header.size != (height, width)
    except images.BadImage as error:
        raise UserError(f"{filename}: {error}.") from None


Prediction = tuple[str, list[tuple[str, float]]]  # (file, [(class name, probability), ...])


def predict_files(
    model: str | os.PathLike,
    filenames: Sequence[str],
    top_k: int = 3,
    on_note: Callable[[str], None] | None = None,
) -> list[Prediction]:
    """The `top_k` classes, with probabilities, of each image file, in order.

    `on_note` hears what was done beyond the plain case (versions skipped, images resized).
    """
    if not filenames:
        raise UserError(
            "--predict needs image files to classify: python run.py --predict --model=PATH IMAGE ..."
        )
    loaded, names, shape = load_serving(model, on_note)
    read = [read_image(name, shape) for name in filenames]
    resized = [name for name, (_, changed) in zip(filenames, read) if changed]
    if resized and on_note is not None:
        on_note(
            f"resized {len(resized)} image(s) to {shape[0]}x{shape[1]} (HxW), the model's input size "
            f"(first: {resized[0]})."
        )
    images_ = np.stack([pixels for pixels, _ in read])
    outputs = loaded.signatures[SIGNATURE](**{INPUT_NAME: tf.constant(images_)})
    probabilities = outputs["probabilities"].numpy()
    broken = [name for name, row in zip(filenames, probabilities) if not np.isfinite(row).all()]
    if broken:
        raise UserError(
            f"--model={model}: its probabilities for {len(broken)} image(s) (first: {broken[0]}) "
            "are not finite (NaN or infinite): the model diverged or its weights are damaged; "
            "export it again from its run."
        )
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
