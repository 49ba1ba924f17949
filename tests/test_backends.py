"""The project on the other Keras backends: the digits chain under JAX, and what PyTorch refuses."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import ROOT, read_results, serve

from krefinery.core.resnet import build_resnet

# As test_cli's TINY chain, with 4 epochs a generation: enough for its 95% bar. Online, so
# the frozen teacher labels batches inside the jitted JAX step, and the relabel summaries
# run the teacher through `relabel.RefinedLabels`, which offline relabelling also uses.
JAX_RUN = ("--depth=8", "--epochs=4", "--generations=2", "--batch_size=32", "--warmup_epochs=0", "--verbose=0", "--precision=float32", "--relabel=online")


def run_on_backend(backend: str, *args: str) -> subprocess.CompletedProcess:
    """`KERAS_BACKEND=<backend> python run.py ARGS`, checking that Keras really took it."""
    script = (
        "import keras, runpy, sys; "
        f"assert keras.backend.backend() == {backend!r}, keras.backend.backend(); "
        "sys.argv = ['run.py', *sys.argv[1:]]; runpy.run_path('run.py', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.heavy
def test_online_digits_chain_on_jax_reaches_the_tensorflow_bar_and_serves_from_tensorflow(tmp_path):
    result = run_on_backend("jax", *JAX_RUN, f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'models'}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(tmp_path / "run")
    assert results["runtime"]["precision"] == "float32"
    assert results["runtime"]["jit_compile"] is True  # Keras jits JAX steps.
    for g in results["generations"]:
        assert g["test_accuracy"] >= 0.95, results["generations"]  # test_cli's bar under TensorFlow.
    assert results["generations"][0]["train_label_agreement"] == 1.0
    assert results["generations"][1]["train_label_entropy"] > 0  # Trained on the teacher's labels.

    # The SavedModel written from JAX (via jax2tf) serves, in TensorFlow, what the saved
    # weights compute in a TensorFlow-backed classifier.
    data = results["data"]
    classifier = build_resnet(tuple(data["image_shape"]), data["num_classes"], depth=8)
    classifier.load_weights(tmp_path / "run" / f"gen_{results['best_generation']}.weights.h5")
    images = np.random.default_rng(0).integers(0, 256, (16, *data["image_shape"])).astype(np.uint8)
    served = serve(results["exports"]["best"], images)
    expected = tf.nn.softmax(classifier(images, training=False))
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
    assert served["class_names"].tolist() == [str(c).encode() for c in expected.numpy().argmax(-1)]


def test_pytorch_backend_is_refused_before_training_as_it_cannot_export(tmp_path):
    pytest.importorskip("torch")  # Optional: not in the test extra (a large download).
    result = run_on_backend("torch", *JAX_RUN, f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'models'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: KERAS_BACKEND=torch cannot export")
    assert not (tmp_path / "run").exists() and not (tmp_path / "models").exists()
