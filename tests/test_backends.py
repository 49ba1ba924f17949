"""The project on the other Keras backends: the digits chain under JAX (with TensorFlow there
to export, and without it, killed and resumed), and what PyTorch refuses."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import ROOT, comparable, read_results, serve
from test_arrays import BLOCK_TENSORFLOW

from krefinery.core.resnet import build_resnet
from krefinery.runtime.console import STARTUP_NOTICES

# As test_cli's TINY chain, with 4 epochs a generation: enough for its 95% bar. Online, so
# the frozen teacher labels batches inside the jitted JAX step, and the relabel summaries
# run the teacher through `relabel.RefinedLabels`, which offline relabelling also uses. On
# the in-memory path (`--input=memory`), the one a run without TensorFlow takes.
JAX_RUN = (
    "--depth=8", "--epochs=4", "--generations=2", "--batch_size=32", "--warmup_epochs=0", "--verbose=0",
    "--precision=float32", "--relabel=online", "--input=memory",
)
# run.py on the backend named by the first argument, which Keras must really have taken.
RUN_PY = """
import runpy, sys
import keras
assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
sys.argv = ["run.py", *sys.argv[2:]]
runpy.run_path("run.py", run_name="__main__")
"""


def run_on_backend(
    backend: str, *args: str, tensorflow: bool = True, kill_at: str | None = None
) -> subprocess.CompletedProcess:
    """`KERAS_BACKEND=<backend> python run.py ARGS` in a fresh process; without TensorFlow
    (as where it is not installed) if `tensorflow` is False; SIGKILLed at the fault point
    `kill_at` if given."""
    env = {**os.environ, "KERAS_BACKEND": backend}
    env.pop("KREFINERY_KILL_AT", None)
    if kill_at:
        env["KREFINERY_KILL_AT"] = kill_at
    script = ("" if tensorflow else BLOCK_TENSORFLOW) + RUN_PY
    return subprocess.run(
        [sys.executable, "-c", script, backend, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory) -> Path:
    """JAX_RUN under JAX, TensorFlow installed (so it exports a SavedModel), never
    interrupted: its work directory."""
    root = tmp_path_factory.mktemp("jax")
    result = run_on_backend("jax", *JAX_RUN, f"--workdir={root / 'run'}", f"--export_dir={root / 'models'}")
    assert result.returncode == 0, result.stderr[-3000:]
    # TensorFlow, loaded here as well (Keras seeds it), kept its start-up notices to itself.
    assert not [line for line in result.stderr.splitlines() if any(n in line for n in STARTUP_NOTICES)]
    return root / "run"


def test_online_digits_chain_on_jax_reaches_the_tensorflow_bar_and_serves_from_tensorflow(jax_run):
    results = read_results(jax_run)
    assert results["runtime"]["precision"] == "float32" and results["runtime"]["input"] == "memory"
    assert results["runtime"]["jit_compile"] is True  # Keras jits JAX steps.
    for g in results["generations"]:
        assert g["test_accuracy"] >= 0.95, results["generations"]  # test_cli's bar under TensorFlow.
    assert results["generations"][0]["train_label_agreement"] == 1.0
    assert results["generations"][1]["train_label_entropy"] > 0  # Trained on the teacher's labels.

    # The SavedModel written from JAX (via jax2tf) serves, in TensorFlow, what the saved
    # weights compute in a TensorFlow-backed classifier.
    data = results["data"]
    classifier = build_resnet(tuple(data["image_shape"]), data["num_classes"], depth=8)
    classifier.load_weights(jax_run / f"gen_{results['best_generation']}.weights.h5")
    images = np.random.default_rng(0).integers(0, 256, (16, *data["image_shape"])).astype(np.uint8)
    served = serve(results["exports"]["best"], images)
    expected = tf.nn.softmax(classifier(images, training=False))
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
    assert served["class_names"].tolist() == [str(c).encode() for c in expected.numpy().argmax(-1)]


def test_killed_on_jax_without_tensorflow_the_same_command_finishes_the_same_run(jax_run, tmp_path):
    """Without TensorFlow (as where it is not installed), killed with SIGKILL in generation 1,
    the same command finishes the run with the results of the one above; it leaves a Keras
    model where TensorFlow would write a SavedModel."""
    args = (*JAX_RUN, f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'models'}")
    killed = run_on_backend("jax", *args, tensorflow=False, kill_at="gen1.epoch2.batch10")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / "run" / "results.json").exists()
    resumed = run_on_backend("jax", *args, tensorflow=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference, results = read_results(jax_run), read_results(tmp_path / "run")
    assert results["runtime"] == reference["runtime"]
    assert comparable(results) == comparable(reference)

    # No SavedModel without TensorFlow: the best generation as a Keras model, whose test
    # accuracy (read here, on TensorFlow) is the run's.
    version = Path(results["exports"]["best"])
    assert sorted(p.name for p in version.iterdir()) == ["assets.extra", "model.keras"]
    with zipfile.ZipFile(version / "model.keras") as archive:  # Keras's layers alone: loads without krefinery.
        assert "krefinery" not in archive.read("config.json").decode()
    model = keras.saving.load_model(version / "model.keras")
    from krefinery.data.sources import load_source

    test = load_source("digits").test
    accuracy = np.mean(np.argmax(model.predict(test.images, verbose=0), -1) == test.labels)
    best = results["generations"][results["best_generation"] - 1]
    assert accuracy == pytest.approx(best["test_accuracy"], abs=1e-6)


def test_pytorch_backend_is_refused_before_training_as_it_cannot_export(tmp_path):
    pytest.importorskip("torch")  # Optional: not in the test extra (a large download).
    result = run_on_backend("torch", *JAX_RUN, f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'models'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: KERAS_BACKEND=torch cannot export")
    assert not (tmp_path / "run").exists() and not (tmp_path / "models").exists()
