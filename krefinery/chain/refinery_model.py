"""A trained model as generation 1 (`--refinery_model`), as the paper's code takes its
refinery (`--label-refinery-model` with a state file): read, checked against the data,
and hashed, so that the store never takes a changed file for the old one.

It may be a `.keras` file, or a version this project exported (a SavedModel carries its
Keras model in `assets.extra/`), or a model folder of such versions (the highest that
holds one). Files are read with Keras's safe mode on: a file from elsewhere must not run code.
The model must take raw pixels (0..255, as ours do) and return logits.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import keras

from krefinery.config import KERAS_MODEL, KERAS_MODEL_BESIDE_SAVEDMODEL
from krefinery.core.batchnorm import with_fused_batch_norm
from krefinery.errors import UserError

FLAG = "--refinery_model"


def model_file(path: str | os.PathLike) -> Path:
    """The `.keras` file that `path` names: itself, a version folder's, or that of a
    model folder's highest version that has one."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".keras":
            raise UserError(f"{FLAG}={path} is not a .keras file: save the model with model.save('name.keras').")
        return path
    if not path.is_dir():
        raise UserError(f"{FLAG}={path}: no such file or folder.")
    for inside in (KERAS_MODEL_BESIDE_SAVEDMODEL, KERAS_MODEL):
        if (path / inside).is_file():
            return path / inside
    versions = sorted((int(p.name) for p in path.iterdir() if p.name.isdigit()), reverse=True)
    for version in versions:
        for inside in (KERAS_MODEL_BESIDE_SAVEDMODEL, KERAS_MODEL):
            if (path / str(version) / inside).is_file():
                return path / str(version) / inside
    raise UserError(
        f"{FLAG}={path} holds no Keras model: give a .keras file, or an export of this project "
        f"(a version folder with {KERAS_MODEL_BESIDE_SAVEDMODEL}; exports made before 2026-12-07 lack it)."
    )


def digest(path: str | os.PathLike) -> str:
    """SHA-256 of the model file's bytes: what the store's keys hold, never the path."""
    sha = hashlib.sha256()
    with open(model_file(path), "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def load(path: str | os.PathLike, image_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The model, read in safe mode and checked to take these images and give one logit
    per class; anything else is one `UserError` line."""
    file = model_file(path)
    try:
        model = keras.saving.load_model(file, compile=False, safe_mode=True)
    except (TypeError, ValueError, OSError, KeyError, zipfile.BadZipFile) as error:
        reason = " ".join(str(error).split())
        if "Could not locate" in reason or "custom" in reason.lower():
            reason = "it needs custom objects (layers or functions Keras and krefinery do not know), which cannot be loaded here"
        elif "safe_mode" in reason:
            reason = "it holds code (a Lambda layer, say), which Keras's safe mode does not run"
        raise UserError(f"{FLAG}={path}: cannot load {file}: {reason[:300]}.") from None
    if not isinstance(model, keras.Model) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(f"{FLAG}={path}: expected a model with one image input and one output of logits.")
    given = tuple(model.inputs[0].shape[1:])
    if given != tuple(image_shape):
        raise UserError(
            f"{FLAG}={path} takes images of {_shape(given)}, but the data's are {_shape(image_shape)}: "
            "use a model trained on this data's size, or --image_size to resize the data."
        )
    classes = model.outputs[0].shape[-1]
    if len(model.outputs[0].shape) != 2 or classes != num_classes:
        raise UserError(
            f"{FLAG}={path} gives {classes} outputs, but the data has {num_classes} classes: "
            "use a model trained on this dataset's classes."
        )
    return with_fused_batch_norm(model)


def _shape(shape) -> str:
    return "x".join("?" if side is None else str(side) for side in shape)
