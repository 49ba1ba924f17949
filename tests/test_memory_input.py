"""`run.py --input=memory`: the durable chain on batches made on the device.

Killed with SIGKILL in a generation, the same command finishes the run with the results of
a run never interrupted, on TensorFlow and on JAX; on JAX it needs no TensorFlow at all
(its imports made to fail), and leaves a Keras model where TensorFlow would write a
SavedModel. The in-memory and tf.data paths reach the same digits bar.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import ROOT, comparable, read_results, run_cli
from test_arrays import BLOCK_TENSORFLOW

# Enough epochs for ResNet-8 to reach the digits bar (95% of the held-out images).
BAR = ("--depth=8", "--epochs=4", "--generations=2", "--batch_size=32", "--warmup_epochs=0", "--verbose=0", "--precision=float32")
QUICK = ("--depth=8", "--epochs=2", "--generations=2", "--batch_size=32", "--warmup_epochs=0", "--verbose=0", "--precision=float32")
# run.py in a process whose imports of TensorFlow (and TFDS) fail.
WITHOUT_TENSORFLOW = BLOCK_TENSORFLOW + """
import runpy
sys.argv = ["run.py", *sys.argv[1:]]
runpy.run_path("run.py", run_name="__main__")
"""


def run_process(args: tuple[str, ...], backend: str, kill_at: str | None = None) -> None:
    """`python run.py ARGS` in a fresh process on `backend` (on JAX, without TensorFlow),
    SIGKILLed at `kill_at` if given."""
    env = {**os.environ, "KERAS_BACKEND": backend}
    env.pop("KREFINERY_KILL_AT", None)
    if kill_at:
        env["KREFINERY_KILL_AT"] = kill_at
    command = ["-c", WITHOUT_TENSORFLOW] if backend == "jax" else ["run.py"]
    result = subprocess.run(
        [sys.executable, *command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == (-9 if kill_at else 0), result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """The bar chain on each input path, in this process, never interrupted."""
    root = tmp_path_factory.mktemp("inputs")
    for path in ("memory", "tfdata"):
        run_cli(*BAR, f"--input={path}", f"--workdir={root / path}", f"--export_dir={root / 'models'}")
    return {path: read_results(root / path) for path in ("memory", "tfdata")}


def test_memory_and_tfdata_chains_reach_the_same_digits_bar(runs):
    for path, results in runs.items():
        assert results["runtime"]["input"] == path
        for generation in results["generations"]:
            # 95% of the 144 validation and 360 test digits; chance is 10%.
            assert generation["val_accuracy"] >= 0.95 and generation["test_accuracy"] >= 0.95, (path, generation)
    # Two paths, two random streams: the same recipe, not the same batches.
    assert runs["memory"]["generations"] != runs["tfdata"]["generations"]


def test_killed_on_tensorflow_the_same_command_finishes_the_same_run(runs, tmp_path):
    args = (*BAR, "--input=memory", f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'models'}")
    run_process(args, "tensorflow", kill_at="gen2.epoch2.batch20")
    run_cli(*args)
    results = read_results(tmp_path / "run")
    assert comparable(results) == comparable(runs["memory"])
    trained = (tmp_path / "run" / "generations" / "trained.jsonl").read_text().splitlines()
    # Generation 1 once; generation 2 from its checkpoint after epoch 1 (3 of 4 epochs).
    assert [json.loads(line)["epochs"] for line in trained] == [4, 3]


@pytest.mark.heavy
def test_killed_on_jax_without_tensorflow_the_same_command_finishes_the_same_run(tmp_path):
    def run(name: str, kill_at: str | None = None) -> None:
        args = (*QUICK, "--input=memory", f"--workdir={tmp_path / name}", f"--export_dir={tmp_path / name / 'models'}")
        run_process(args, "jax", kill_at)

    run("reference")
    run("killed", kill_at="gen1.epoch2.batch10")
    assert not (tmp_path / "killed" / "results.json").exists()
    run("killed")
    reference, resumed = read_results(tmp_path / "reference"), read_results(tmp_path / "killed")
    assert resumed["runtime"] == reference["runtime"]
    assert reference["runtime"]["input"] == "memory"
    assert reference["runtime"]["jit_compile"] is True  # JAX's steps, not TensorFlow's.
    assert comparable(resumed) == comparable(reference)

    # No SavedModel without TensorFlow: the best generation as a Keras model, whose test
    # accuracy (read here, on TensorFlow) is the run's.
    version = Path(resumed["exports"]["best"])
    assert sorted(p.name for p in version.iterdir()) == ["assets.extra", "model.keras"]
    model = keras.saving.load_model(version / "model.keras")
    from krefinery.data.sources import load_source

    test = load_source("digits").test
    accuracy = np.mean(np.argmax(model.predict(test.images, verbose=0), -1) == test.labels)
    best = resumed["generations"][resumed["best_generation"] - 1]
    assert accuracy == pytest.approx(best["test_accuracy"], abs=1e-6)
