"""Exports in the TF Serving layout: `<export_dir>/<name>/<version>/`.

Versions are integers that only go up and are never overwritten. Each export is
written into a hidden temporary folder beside the versions and renamed into place, so
a server watching `<export_dir>/<name>/` sees a whole model or none: TF Serving only
loads folders whose name is an integer. A version holds a SavedModel with its serving
signature (`savedmodel.py`); where TensorFlow is not installed, it holds the model as
`model.keras` instead (Keras's own format), since only TensorFlow writes SavedModels.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import keras

from krefinery import faults
from krefinery.config import EXPORT_NAME, Config
from krefinery.errors import DiskFull, UserError
from krefinery.files import pid_alive
from krefinery.runtime.device import tensorflow_installed

SIGNATURE = "serving_default"
INPUT_NAME = "images"
KERAS_MODEL = "model.keras"  # A version's model where TensorFlow is not installed.
TEMP_PREFIX = ".tmp-export-"
SOURCE_FILE = "krefinery.json"


def default_export_name(dataset: str) -> str:
    """`digits`, `svhn`, ...; for `folder:PATH` the folder's name; always a safe folder name."""
    if dataset.startswith("folder:"):
        dataset = os.path.basename(os.path.normpath(dataset[len("folder:") :]))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset).strip("._-")
    return name or "model"


def check_export_name(name: str) -> str:
    """Export names become one folder: letters, digits, `_`, `.`, `-`, not hidden."""
    if not EXPORT_NAME.fullmatch(name):
        raise UserError(
            f"export name {name!r} must be one folder name of letters, digits, '_', '.' "
            "or '-', starting with a letter or digit."
        )
    return name


def versions(model_dir: Path) -> list[int]:
    """The integer version folders under `model_dir`, ascending; anything else is ignored."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def export_classifier(
    classifier: keras.Model,
    class_names: Sequence[str],
    image_shape: Sequence[int],
    export_dir: str | os.PathLike,
    name: str,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Writes the next version of model `name`; returns `<export_dir>/<name>/<version>`.

    On any failure the temporary folder is removed and no version appears; temporary
    folders that killed processes left behind are removed first. If another process
    takes the chosen version first, the next free one is used. `source` (say, the run
    and generation exported) is kept in the version's `assets.extra/krefinery.json`, so
    `find_export` can tell whether that model already landed.
    """
    model_dir = Path(export_dir) / check_export_name(name)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create export folder {model_dir}: {error.strerror}.") from None
    if tensorflow_installed():
        from krefinery.outputs.savedmodel import saved_model_writer

        save = saved_model_writer(classifier, class_names, image_shape)
    else:

        def save(temp: Path) -> None:
            classifier.save(temp / KERAS_MODEL)

    def write(temp: Path) -> None:
        temp.mkdir()
        save(temp)
        if source is not None:
            (temp / "assets.extra").mkdir(exist_ok=True)
            (temp / "assets.extra" / SOURCE_FILE).write_text(json.dumps(dict(source)) + "\n")
        faults.reached("export")

    return land_version(model_dir, write)


def land_version(model_dir: Path, write: Callable[[Path], None]) -> Path:
    """The next integer version of `model_dir`, filled by `write(temp)` in a hidden
    temporary folder beside the versions and renamed into place, so a server watching
    the folder never sees half a model; returns the version folder.

    On any failure the temporary folder is removed and no version appears; temporary
    folders that killed processes left behind are removed first. If another process
    takes the chosen version first, the next free one is used. `write` makes the folder
    itself: `mkdir` (not `mkdtemp`, whose 0700 would hide the model from a server's
    user) honours the umask.
    """
    remove_stale_exports(model_dir)
    temp = model_dir / f"{TEMP_PREFIX}{socket.gethostname()}.{os.getpid()}-{secrets.token_hex(4)}"
    try:
        write(temp)
        while True:
            target = model_dir / str(max(versions(model_dir), default=0) + 1)
            try:
                os.rename(temp, target)
                return target
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(temp) from None
        raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def find_export(model_dir: Path, source: Mapping[str, Any]) -> Path | None:
    """The version of `model_dir` that was exported from `source`, if one landed."""
    wanted = json.loads(json.dumps(dict(source)))
    for version in reversed(versions(model_dir)):
        if _read_source(model_dir / str(version)) == wanted:
            return model_dir / str(version)
    return None


def _read_source(version_dir: Path) -> Any:
    """What a version was exported from (its `assets.extra` marker), or None."""
    try:
        return json.loads((version_dir / "assets.extra" / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def remove_stale_exports(model_dir: Path) -> None:
    """Removes `.tmp-export-*` folders whose process, on this host, is gone."""
    host = socket.gethostname()
    for path in model_dir.glob(f"{TEMP_PREFIX}*"):
        rest = path.name[len(TEMP_PREFIX) :]
        if rest.startswith(f"{host}."):
            rest = rest[len(host) + 1 :]
        elif "." in rest.split("-", 1)[0]:
            continue  # Another host's.
        pid = rest.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def complete(version_dir: Path) -> bool:
    """Whether a version folder holds a whole SavedModel: its graph and its variables."""
    return (version_dir / "saved_model.pb").is_file() and (
        version_dir / "variables" / "variables.index"
    ).is_file()


def resolve_model_path(path: str | os.PathLike) -> tuple[Path, list[str]]:
    """A version folder as given, or, for a model folder, its highest complete version.

    Like a server, a model folder's incomplete versions (copied or written half-way by
    another tool) are passed over; their names come back so the caller can say so.
    """
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path, []
    if not path.exists():
        raise UserError(f"--model={path}: no such file or folder.")
    found = versions(path)
    skipped = []
    for version in reversed(found):
        if complete(path / str(version)):
            return path / str(version), skipped
        skipped.append(str(version))
    if found:
        raise UserError(
            f"--model={path}: none of its versions ({', '.join(map(str, found))}) is a complete "
            "SavedModel (saved_model.pb and variables/)."
        )
    raise UserError(
        f"--model={path} is not a SavedModel: expected a version folder holding saved_model.pb, "
        "or a model folder of integer version folders."
    )


def export_generation(
    classifier: keras.Model,
    class_names: Sequence[str],
    image_shape: Sequence[int],
    config: Config,
    generation: int | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Exports a run's classifier as `<export_name>` (the best) or `<export_name>_gen<k>`.

    Each generation gets a model name of its own, so the plain name always serves the
    best generation and a server's "latest version" policy never picks a worse one.
    """
    name = export_model_name(config, generation)
    return export_classifier(classifier, class_names, image_shape, config.export_dir, name, source)


def model_folder(config: Config, generation: int | None = None) -> Path:
    """`<export_dir>/<model name>`: where a run's versions of that model land."""
    return Path(config.export_dir) / export_model_name(config, generation)


def export_once(
    classifier: keras.Model,
    class_names: Sequence[str],
    image_shape: Sequence[int],
    config: Config,
    workdir: Path,
    key: str,
    generation: int | None = None,
) -> Path:
    """The version of this model exported from the stored generation `key` of the work
    in `workdir`: the one that landed before (a rerun, or a command resumed after a
    kill, finds it by its `source` marker), else a new one. So a run, a search or a study
    adds one version, however often it is run."""
    source = {"workdir": os.fspath(Path(workdir).resolve()), "key": key}
    landed = find_export(model_folder(config, generation), source)
    if landed is not None:
        return landed
    return export_generation(classifier, class_names, image_shape, config, generation, source)


def export_model_name(config: Config, generation: int | None = None) -> str:
    """`<export_name>` for the best generation, `<export_name>_gen<k>` for generation k."""
    name = config.export_name or default_export_name(config.dataset)
    return name if generation is None else f"{name}_gen{generation}"


def check_backend_exports() -> None:
    """Every run ends with a SavedModel export, which Keras writes from the TensorFlow and
    JAX backends only (from PyTorch it needs torch_xla): refuse a run that would fail there."""
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise UserError(
            f"KERAS_BACKEND={backend} cannot export the SavedModel that every run ends with; "
            "run with KERAS_BACKEND=tensorflow (the default) or KERAS_BACKEND=jax."
        )


def prepare_export_dir(config: Config) -> Path:
    """`<export_dir>/<name>`, checked up front so that an unusable folder fails before
    any data is read; nothing is created (export makes the folder), so a refused run
    leaves nothing behind.
    """
    check_backend_exports()
    model_dir = model_folder(config)
    where = f"--export_dir={config.export_dir}"
    existing = model_dir
    while not os.path.lexists(existing):
        parent = existing.parent
        if parent == existing:
            break
        existing = parent
    if existing.exists() and not existing.is_dir():
        raise UserError(f"{where}: {existing} is a file, so {model_dir} cannot be created.")
    if not existing.exists():
        raise UserError(f"{where}: cannot create {model_dir}: {existing} is a broken link.")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == model_dir else f"cannot be created: {existing} is not writable"
        raise UserError(f"{where}: {model_dir} {what}.")
    return model_dir


def copy_export(version_dir: Path, config: Config) -> Path:
    """A copy of an exported version as the next version of `<export_dir>/<name>`, once:
    a copy that landed before (same `assets.extra` source marker) is returned instead.

    Copied into a hidden temporary folder and renamed into place, as `export` does, so a
    server watching the folder never sees half a model.
    """
    model_dir = model_folder(config)
    source = _read_source(version_dir)
    landed = find_export(model_dir, source) if source is not None and model_dir.is_dir() else None
    if landed is not None:
        return landed
    model_dir.mkdir(parents=True, exist_ok=True)
    return land_version(model_dir, lambda temp: shutil.copytree(version_dir, temp))
