"""Exports in the TF Serving layout: `<export_dir>/<name>/<version>/`.

Versions are integers that only go up and are never overwritten. Each export is
written into a hidden temporary folder beside the versions and renamed into place, so
a server watching `<export_dir>/<name>/` sees a whole model or none: TF Serving only
loads folders whose name is an integer. A version holds a SavedModel with its serving
signature (`savedmodel.py`), which shows the classifier each image as evaluation did (with
`--crop=inception`, its centre crop), and the same model as `assets.extra/model.keras`
(Keras's own format, which `--refinery_model` reads; the bare classifier, no view); where TensorFlow is not installed, it holds
`model.keras` alone, since only TensorFlow writes SavedModels.

Each version carries a manifest, written last into the temporary folder:
`assets.extra/krefinery.json` holds the `source` the version was exported from (a run's
work directory and stored generation) and the size and SHA-256 of every other file of
the version. A version whose files no longer match it (a lost `variables/`, a file cut
short) is damaged: it is never reused, and never overwritten or deleted (a server may
hold it); the model is exported again as the next version (`export_once`), and
`--predict` passes it over (`resolve_model_path`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import keras

from krefinery import faults, stops
from krefinery.config import (
    EXPORT_NAME,
    KERAS_MODEL,
    KERAS_MODEL_BESIDE_SAVEDMODEL,
    Config,
)
from krefinery.core.batchnorm import with_keras_batch_norm
from krefinery.data import crops
from krefinery.errors import DiskFull, Interrupted, UserError
from krefinery.files import is_no_space, pid_alive
from krefinery.runtime.device import tensorflow_installed

SIGNATURE = "serving_default"
INPUT_NAME = "images"
TEMP_PREFIX = ".tmp-export-"
SOURCE_FILE = "krefinery.json"
# A version's manifest (its source, and every other file's size and SHA-256), in the
# folder TF Serving leaves alone.
MANIFEST = f"assets.extra/{SOURCE_FILE}"


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
    view: crops.View = None,
) -> Path:
    """Writes the next version of model `name`; returns `<export_dir>/<name>/<version>`.
    The SavedModel's signature shows the classifier each image as evaluation did (`view`).

    On any failure the temporary folder is removed and no version appears (a full disk
    is `DiskFull`); temporary folders that killed processes left behind are removed
    first. If another process takes the chosen version first, the next free one is
    used. `source` (say, the run and generation exported) is kept in the version's
    manifest, so `find_export` can tell whether that model already landed.
    """
    model_dir = Path(export_dir) / check_export_name(name)
    with _exporting(model_dir):
        _make_model_dir(model_dir)
        def save_keras(path: Path) -> None:
            # Keras's own layers only, so the file loads wherever Keras does.
            path.parent.mkdir(exist_ok=True)
            with_keras_batch_norm(classifier).save(path)

        def write(temp: Path) -> None:
            temp.mkdir()
            if not tensorflow_installed():
                save_keras(temp / KERAS_MODEL)
                return
            from krefinery.outputs.savedmodel import saved_model_writer

            saved_model_writer(classifier, class_names, image_shape, view)(temp)
            # The Keras model too, for `--refinery_model` (servers leave assets.extra/ alone).
            save_keras(temp / KERAS_MODEL_BESIDE_SAVEDMODEL)

        return land_version(model_dir, write, source)


@contextlib.contextmanager
def _exporting(model_dir: Path):
    """Says where a stop (a signal) hit: during the export, which left no version."""
    try:
        yield
    except Interrupted as stop:
        raise stop.locate(f"during the export to {model_dir}", "exports the model")


def land_version(
    model_dir: Path, write: Callable[[Path], None], source: Mapping[str, Any] | None = None
) -> Path:
    """The next integer version of `model_dir`, filled by `write(temp)` in a hidden
    temporary folder beside the versions and renamed into place, so a server watching
    the folder never sees half a model; returns the version folder.

    The manifest (`source` and every file's size and SHA-256) is written last, before
    the rename. On any failure, a stop included, the temporary folder is removed and no
    version appears; a full disk (TensorFlow's `ResourceExhaustedError` becomes ENOSPC
    in `savedmodel.py`) is `DiskFull` naming `model_dir`. Temporary folders that killed
    processes left behind are removed first. If another process takes the chosen
    version first, the next free one is used. `write` makes the folder itself: `mkdir`
    (not `mkdtemp`, whose 0700 would hide the model from a server's user) honours the
    umask.
    """
    remove_stale_exports(model_dir)
    temp = model_dir / f"{TEMP_PREFIX}{socket.gethostname()}.{os.getpid()}-{secrets.token_hex(4)}"
    try:
        write(temp)
        write_manifest(temp, source)
        faults.reached("export")
        stops.check()  # A stop whose raise was swallowed mid-write lands no version.
        while True:
            target = model_dir / str(max(versions(model_dir), default=0) + 1)
            try:
                os.rename(temp, target)
                return target
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
    except OSError as error:
        if is_no_space(error):
            raise DiskFull(model_dir) from None
        raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def write_manifest(version_dir: Path, source: Mapping[str, Any] | None) -> None:
    """`assets.extra/krefinery.json`: `source` and the size and SHA-256 of every other
    file of the version, by path relative to it."""
    manifest = version_dir / MANIFEST
    listed = {}
    for path in sorted(version_dir.rglob("*")):
        if path.is_file() and path != manifest:
            listed[path.relative_to(version_dir).as_posix()] = {
                "size": path.stat().st_size,
                "sha256": _sha256(path),
            }
    manifest.parent.mkdir(exist_ok=True)
    record = {"source": None if source is None else dict(source), "files": listed}
    manifest.write_text(json.dumps(record, indent=1) + "\n")


def version_problem(version_dir: Path) -> str | None:
    """What is wrong with a version folder, or None if it is whole.

    A version with a manifest is checked against it, file by file (size, then SHA-256);
    one without (from an earlier krefinery, or another tool) must hold a SavedModel's
    `saved_model.pb` and `variables/variables.index`, or a `model.keras`.
    """
    manifest = _read_manifest(version_dir)
    if manifest is None:
        if complete(version_dir) or (version_dir / KERAS_MODEL).is_file():
            return None
        return "incomplete: no saved_model.pb or variables"
    for name, expected in manifest["files"].items():
        path = version_dir / name
        try:
            size = path.stat().st_size if path.is_file() else None
        except OSError:
            size = None
        if size is None:
            return f"damaged: {name} is missing"
        if size != expected.get("size") or _sha256(path) != expected.get("sha256"):
            return f"damaged: {name} differs from the version's manifest"
    return None


def intact(version_dir: str | os.PathLike) -> bool:
    """Whether a landed version is there and whole (`version_problem`)."""
    path = Path(version_dir)
    return path.is_dir() and version_problem(path) is None


def find_export(model_dir: Path, source: Mapping[str, Any]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The whole version of `model_dir` exported from `source`, if one landed, and the
    damaged versions exported from it (newest first) with what is wrong with them."""
    wanted = json.loads(json.dumps(dict(source)))
    damaged = []
    for version in reversed(versions(model_dir)):
        path = model_dir / str(version)
        if _read_source(path) == wanted:
            problem = version_problem(path)
            if problem is None:
                return path, damaged
            damaged.append((path, problem))
    return None, damaged


def _land_once(
    model_dir: Path, source: Mapping[str, Any], export: Callable[[], Path]
) -> Path:
    """The whole version of `model_dir` exported from `source`, else `export()`'s new one,
    with one line on stderr if the newest version from `source` was damaged (left in place:
    a server may hold it)."""
    landed, damaged = find_export(model_dir, source)
    if landed is not None:
        return landed
    path = export()
    if damaged:
        old, problem = damaged[0]
        print(
            f"warning: {old} is {problem}; it is left in place, and the model was exported "
            f"again as {path}.",
            file=sys.stderr,
        )
    return path


def _read_manifest(version_dir: Path) -> dict[str, Any] | None:
    """A version's manifest, or None if it has none (or one of an earlier krefinery, which
    held the source alone)."""
    record = _read_marker(version_dir)
    if isinstance(record, dict) and isinstance(record.get("files"), dict) and "source" in record:
        return record
    return None


def _read_marker(version_dir: Path) -> Any:
    try:
        return json.loads((version_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _read_source(version_dir: Path) -> Any:
    """What a version was exported from (its manifest's `source`; an earlier krefinery's
    marker held the source alone), or None."""
    manifest = _read_manifest(version_dir)
    return manifest["source"] if manifest is not None else _read_marker(version_dir)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def resolve_model_path(path: str | os.PathLike) -> tuple[Path, list[tuple[str, str]]]:
    """A version folder as given, or, for a model folder, its highest whole version.

    Like a server, a model folder's incomplete versions (copied or written half-way by
    another tool) are passed over, and so are damaged ones (`version_problem`: files
    that no longer match the version's manifest); (name, problem) of each comes back so
    the caller can say so. A version folder given itself is refused only if its files
    do not match its manifest.
    """
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        problem = version_problem(path) if _read_manifest(path) is not None else None
        if problem is not None:
            raise UserError(f"--model={path} is {problem}; use another version.")
        return path, []
    if not path.exists():
        raise UserError(f"--model={path}: no such file or folder.")
    found = versions(path)
    skipped = []
    for version in reversed(found):
        problem = version_problem(path / str(version))
        if problem is None and complete(path / str(version)):
            return path / str(version), skipped
        skipped.append((str(version), problem or "incomplete: no saved_model.pb or variables"))
    if found:
        raise UserError(
            f"--model={path}: none of its versions ({', '.join(map(str, found))}) is a complete "
            "SavedModel (saved_model.pb and variables/) that matches its manifest."
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
    view = crops.centre_indices(tuple(image_shape[:2]), config.crop_spec.center)
    return export_classifier(classifier, class_names, image_shape, config.export_dir, name, source, view)


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
    return _land_once(
        model_folder(config, generation),
        source,
        lambda: export_generation(classifier, class_names, image_shape, config, generation, source),
    )


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
    any data is read: a temporary folder is really created in the nearest existing
    ancestor and removed (a permission check passes for root on `/proc`, where nothing
    can be created). Nothing is left (export makes the folder), so a refused run leaves
    nothing behind.
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
    try:
        probe = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{socket.gethostname()}.{os.getpid()}-", dir=existing)
        os.rmdir(probe)
    except OSError as error:
        if is_no_space(error):
            raise DiskFull(model_dir) from None
        if existing == model_dir:
            raise UserError(f"{where}: {model_dir} is not writable ({error.strerror}).") from None
        raise UserError(
            f"{where}: {model_dir} cannot be created: a folder cannot be made in {existing} "
            f"({error.strerror})."
        ) from None
    return model_dir


def _make_model_dir(model_dir: Path) -> None:
    """`<export_dir>/<name>`, made if it is not there (a full disk is `DiskFull`)."""
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if is_no_space(error):
            raise DiskFull(model_dir) from None
        raise UserError(f"cannot create export folder {model_dir}: {error.strerror}.") from None


def copy_export(version_dir: Path, config: Config) -> Path:
    """A copy of an exported version as the next version of `<export_dir>/<name>`, once:
    a copy that landed before (same `assets.extra` source marker) is returned instead.

    Copied into a hidden temporary folder and renamed into place, as `export` does, so a
    server watching the folder never sees half a model.
    """
    model_dir = model_folder(config)
    source = _read_source(version_dir)

    def copy() -> Path:
        with _exporting(model_dir):
            _make_model_dir(model_dir)
            # The copy's manifest is made anew (the same, if the copied version is whole).
            return land_version(model_dir, lambda temp: shutil.copytree(version_dir, temp), source)

    if source is None:
        return copy()
    return _land_once(model_dir, source, copy)
