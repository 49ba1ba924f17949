"""`run.py --input=memory`: the durable chain on batches made on the device.

Killed with SIGKILL in a generation, the same command finishes the run with the results of
a run never interrupted (on JAX without TensorFlow: test_backends.py). The in-memory and
tf.data paths reach the same digits bar.
"""

from __future__ import annotations

import json

import pytest
from helpers import comparable, copy_stored, read_results, run_cli, run_forked

from krefinery import faults

# Enough epochs for ResNet-8 to reach the digits bar (95% of the held-out images).
BAR = ("--depth=8", "--epochs=4", "--generations=2", "--batch_size=32", "--warmup_epochs=0", "--verbose=0", "--precision=float32")


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
    """Generation 1 stored (as an earlier run left it), generation 2 killed mid-epoch."""
    args = (*BAR, "--input=memory", f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'models'}")
    copy_stored(runs["memory"], tmp_path / "run", 1)
    killed = run_forked(*args, env={faults.KILL_AT: "gen2.epoch2.batch20"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_cli(*args)
    results = read_results(tmp_path / "run")
    assert comparable(results) == comparable(runs["memory"])
    trained = (tmp_path / "run" / "generations" / "trained.jsonl").read_text().splitlines()
    # Generation 2 from its checkpoint after epoch 1: 3 of 4 epochs.
    assert [json.loads(line)["epochs"] for line in trained] == [3]
