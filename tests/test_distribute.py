"""Several devices: a chain on two replicas is the chain on one, and bad choices are one line.

The two-device chains run in fresh processes (tests/distributed_runs.py): TensorFlow's
logical CPUs and JAX's host devices must be set up before either starts. Both chains of
a pair train on the same global batches (of the 100 training images, 16 under TensorFlow,
whose last batch of each epoch, 4, splits evenly; 20 under JAX), so they compute the same
sums in another order: tf.distribute adds two half-batch gradients, synchronized batch
norm takes E[x^2] - E[x]^2 over both where one device takes two passes, and JAX's SPMD
step reduces in another order. Measured on a 2-core Xeon (cpu-bf16), every weight of
both generations, batch-norm statistics included, agreed within 2e-6 of its tensor's
largest value (TensorFlow) and 1e-6 (JAX, at 16 a batch). The bar is 1e-4: float32
rounding over these 5-14 steps a generation stays far below it, while
the faults it guards against do not (measured over 2 epochs, TensorFlow: a loss not
divided by the replica count, i.e. doubled gradients, moved some weight by 1.9x its
tensor's largest value; per-replica batch statistics by 1.1x).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    ROOT,
    read_json,
    read_results,
    read_weights,
    refusal,
    serve,
    write_images,
)

from krefinery.core.resnet import build_resnet
from krefinery.errors import UserError

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """124 images of 3 classes: 100 train, 12 validation, 12 test."""
    root = tmp_path_factory.mktemp("images")
    write_images(root / "train", {"a": 42, "b": 41, "c": 41})
    return root


@pytest.fixture(scope="module")
def two_devices(images, tmp_path_factory):
    """`two_devices(backend)`: the report and output folder of tests/distributed_runs.py
    under that backend. Run serially, both backends' runs start at once and run side by
    side (much of their time is compilation, on one core each); under xdist each starts
    when its test asks for it, as the other worker keeps the other core busy (and a
    worker never runs a process whose test the other worker has)."""
    started = {}

    def start(backend: str) -> None:
        out = tmp_path_factory.mktemp(backend)
        process = subprocess.Popen(
            [sys.executable, "tests/distributed_runs.py", str(images), str(out)],
            cwd=ROOT,
            env={**os.environ, "KERAS_BACKEND": backend},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started[backend] = (process, out)

    if "PYTEST_XDIST_WORKER" not in os.environ:
        for backend in ("tensorflow", "jax"):
            start(backend)

    def finished(backend: str) -> tuple[dict, Path]:
        if backend not in started:
            start(backend)
        process, out = started[backend]
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        return read_json(out / "report.json"), out

    yield finished
    for process, _ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def assert_same_chain(one, two) -> None:
    """Every generation's weights within TOLERANCE of their tensor's largest value; the
    same records; different chain keys (one device's store never serves two's)."""
    results = [read_results(run) for run in (one, two)]
    for generation in (1, 2):
        a, b = (read_weights(run / f"gen_{generation}.weights.h5") for run in (one, two))
        assert a.keys() == b.keys()
        for name in a:
            scale = max(float(np.max(np.abs(a[name]))), 1e-6)
            assert np.max(np.abs(a[name] - b[name])) <= TOLERANCE * scale, (generation, name)
    for mine, theirs in zip(*(r["generations"] for r in results), strict=True):
        for figure in ("val_accuracy", "test_accuracy", "train_accuracy", "train_label_agreement"):
            assert mine[figure] == pytest.approx(theirs[figure], abs=0.011), figure  # < 1 of 100.
        assert mine["train_label_entropy"] == pytest.approx(theirs["train_label_entropy"], rel=1e-3)
    keys = [{p.name for p in (run / "generations").glob("*.json")} for run in (one, two)]
    assert keys[0] and keys[1] and not keys[0] & keys[1]


@pytest.mark.heavy
def test_two_mirrored_replicas_resume_and_export_the_one_device_chain(two_devices):
    report, out = two_devices("tensorflow")
    # Stopped in generation 2's second epoch, the same command resumed it from its
    # checkpoint (weights, optimizer state) under the strategy.
    assert report["interrupted"]["code"] == "interrupted"
    for name in ("none", "mirrored"):
        assert report[name]["code"] == 0, report[name]["stderr"]
    none, mirrored = out / "none", out / "mirrored"
    results = read_results(mirrored)
    assert results["runtime"]["distribute"] == "mirrored" and results["runtime"]["replicas"] == 2
    assert read_results(none)["runtime"]["replicas"] == 1
    assert_same_chain(none, mirrored)  # Offline: generation 2 trains on the relabelled table.

    # The SavedModel written under the strategy serves what its weights compute.
    data = results["data"]
    classifier = build_resnet(tuple(data["image_shape"]), data["num_classes"], depth=8)
    classifier.load_weights(mirrored / f"gen_{results['best_generation']}.weights.h5")
    pixels = np.random.default_rng(0).integers(0, 256, (8, *data["image_shape"])).astype(np.uint8)
    served = serve(results["exports"]["best"], pixels)
    np.testing.assert_allclose(served["probabilities"], tf.nn.softmax(classifier(pixels)), atol=1e-5)

    odd = report["odd_batch"]
    assert odd["code"] == 2 and odd["stderr"].count("\n") == 1
    assert odd["stderr"].startswith("error: --batch_size=15 is the global batch")
    assert not (out / "odd_batch").exists()


@pytest.mark.heavy
def test_jax_data_parallel_trains_the_one_device_online_chain(two_devices):
    report, out = two_devices("jax")
    for name in ("none", "data_parallel"):
        assert report[name]["code"] == 0, report[name]["stderr"]
    results = read_results(out / "data_parallel")
    assert results["runtime"]["distribute"] == "data_parallel" and results["runtime"]["replicas"] == 2
    # Online: the frozen teacher labels every batch inside the SPMD step.
    assert_same_chain(out / "none", out / "data_parallel")
    assert os.path.isdir(results["exports"]["best"])
    wrong = report["mirrored_on_jax"]
    assert wrong["code"] == 2 and wrong["stderr"].count("\n") == 1
    assert wrong["stderr"].startswith("error: --distribute=mirrored is TensorFlow's tf.distribute")


def exit_line(capsys, *flags: str) -> str:
    """run.py's exit code 2 and its one line on stderr."""
    return refusal(capsys, "--depth=8", "--epochs=1", "--generations=1", "--verbose=0", *flags)


CLUSTER = {"worker": ["localhost:12345", "localhost:23456"]}


def test_a_device_choice_this_backend_or_cluster_cannot_honour_is_one_line(tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    line = exit_line(capsys, "--distribute=data_parallel", f"--workdir={workdir}")
    assert line.startswith("error: --distribute=data_parallel is keras.distribution.DataParallel")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    line = exit_line(capsys, "--distribute=multi_worker", f"--workdir={workdir}")
    assert line.startswith("error: --distribute=multi_worker needs TF_CONFIG")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 2}}))
    assert exit_line(capsys, "--distribute=multi_worker", f"--workdir={workdir}").startswith(
        "error: TF_CONFIG's task index 2 is not one of its 2 'worker' host(s) (0 to 1)"
    )
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 0}}))
    assert exit_line(capsys, "--distribute=multi_worker", "--repeats=2", f"--workdir={workdir}").startswith(
        "error: --distribute=multi_worker trains one chain"
    )
    # A valid cluster, on every worker (and by `auto`, which TF_CONFIG makes multi_worker):
    # refused until Keras's fit runs under MultiWorkerMirroredStrategy.
    for index in (0, 1):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": index}}))
        assert exit_line(capsys, f"--workdir={workdir}").startswith(
            "error: --distribute=multi_worker does not train with Keras 3 yet"
        )
    assert not workdir.exists()


def test_a_launch_of_several_processes_that_cannot_be_one_chain_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys
):
    """Processes started as Keras's multi-host guide says train one chain on JAX
    (tests/test_hosts.py); anywhere else each would train a chain of its own into one
    work directory and exit 0 (seen in issue 19: two versions in one export folder), and
    under a TF_CONFIG of several tasks the same. Refused with one line before anything is
    read or written."""
    from krefinery.runtime import distribute, hosts

    workdir = tmp_path / "run"
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "127.0.0.1:29500")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    monkeypatch.setenv(hosts.NUM_PROCESSES, "2")
    for flags in ((), ("--distribute=none",), ("--distribute=mirrored",)):
        assert exit_line(capsys, *flags, f"--workdir={workdir}").startswith(
            "error: KERAS_DISTRIBUTION_NUM_PROCESSES asks for one run across several processes, "
            "which trains on KERAS_BACKEND=jax (here: tensorflow)"
        ), flags
    assert exit_line(capsys).startswith("error: a run on several processes needs --workdir=PATH")
    assert exit_line(capsys, "--tune", f"--workdir={workdir}").startswith(
        "error: --tune does not run across the processes of one run: a search across machines "
        "runs keras-tuner's chief and workers"
    )
    for choice in ("none", "mirrored", "multi_worker"):  # What JAX's processes are refused.
        with pytest.raises(UserError, match=f"--distribute={choice} trains in one process"):
            distribute.check_several(choice, "jax")
    for value in ("two", "0"):
        monkeypatch.setenv(hosts.NUM_PROCESSES, value)
        assert exit_line(capsys, f"--workdir={workdir}") == (
            f"error: KERAS_DISTRIBUTION_NUM_PROCESSES={value} must be a whole number of processes, 1 or more."
        )
    monkeypatch.setenv(hosts.NUM_PROCESSES, "1")  # A job of one process is a run as any other.
    assert distribute.resolve("none", 32) == distribute.ONE_DEVICE
    monkeypatch.delenv(hosts.NUM_PROCESSES)

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 1}}))
    for choice in ("none", "mirrored"):
        assert exit_line(capsys, f"--distribute={choice}", f"--workdir={workdir}").startswith(
            f"error: TF_CONFIG names 2 tasks, but --distribute={choice} trains on this machine alone"
        )
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:12345"]}, "task": {"type": "worker", "index": 0}}))
    assert distribute.resolve("none", 32) == distribute.ONE_DEVICE  # A cluster of one task.
    assert not workdir.exists()
