"""Shared fixtures: small real and mocked data, and a way to call run.py in-process."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> None:
    """Runs run.py's entry point in this process, as `python run.py ARGS` would."""
    import run

    run.FLAGS.unparse_flags()
    run.main(run.FLAGS(["run.py", *args]))


def run_subprocess(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `python run.py ARGS` in a fresh process, for exit codes and stderr."""
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def mocked_tfds(num_examples: int):
    """TFDS's own mock data, with the network probe told that the network is up."""
    import tensorflow_datasets as tfds

    from krefinery.data import sources as datasets

    with pytest.MonkeyPatch.context() as patch, tfds.testing.mock_data(num_examples=num_examples):
        patch.setattr(datasets, "unreachable_download_hosts", lambda builder: [])
        yield


def write_images(root: Path, classes: dict[str, int], size=(12, 12), seed=0) -> None:
    """`root/<class>/<i>.png` images, each class a different brightness."""
    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 40, (*size, 3)) + 60 * index
            png = tf.io.encode_png(tf.constant(image.astype(np.uint8)))
            (folder / f"{i}.png").write_bytes(png.numpy())


TINY_RUN = ("--depth=8", "--epochs=2", "--generations=2", "--batch_size=32", "--warmup_epochs=0", "--verbose=0")


@pytest.fixture(autouse=True)
def _outputs_in_tmp(tmp_path, monkeypatch):
    """Runs start in a temporary folder, so default outputs (saved_models/) never land in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> dict:
    """One tiny digits chain (2 generations, every generation exported), shared by the
    TensorBoard, export and predict tests: `{"workdir", "export_dir", "results"}`.

    It runs in mixed_bfloat16 on every machine (test_cli's chains run in float32), so
    both precisions are exercised whatever `--precision=auto` resolves to here."""
    import json

    root = tmp_path_factory.mktemp("digits_run")
    run_cli(*TINY_RUN, "--precision=mixed_bfloat16", "--export_all_generations", f"--workdir={root / 'run'}", f"--export_dir={root / 'models'}")
    results = json.loads((root / "run" / "results.json").read_text())
    return {"workdir": root / "run", "export_dir": root / "models", "results": results}
