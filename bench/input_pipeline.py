"""Benchmark 5: the training input pipeline alone, per CPU core, vs the model's training step.

The pipeline is the one a run builds: `experiment.prepare_experiment` on 10,000 real
CIFAR-10 JPEGs (32x32x3, `--dataset=folder:`, batch 128, augmentation on), so whatever
`pipeline.training_dataset` does today is what is timed. Steady state: every epoch after
the first reads the cached split (shuffle -> augment -> batch -> labels by id ->
prefetch). It is timed with op determinism on and off (it changes how tf.data may
parallelise), alternating with the run's own training step. Figures are img/s and
img/s per CPU core this process may use. First pass: decoding the JPEGs into the cached
splits, once per run. Target: >= 10,000 img/s per core.

    python -m bench.input_pipeline [--rounds=3] [--tar=../shared/data/cifar10-train-1000.tar]
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile

from bench.common import (
    BATCH,
    SHARED_CIFAR,
    alternate,
    machine,
    rate,
    report,
    run_on_shared_images,
)
from krefinery.config import Config
from krefinery.runtime.device import apply_determinism


def drain(dataset) -> None:
    for _ in dataset:
        pass


def jpeg_first_pass(folder: str) -> float:
    """Images/s of loading and decoding a folder of real JPEGs into the cached splits."""
    from krefinery.data.pipeline import make_splits, onehot_table
    from krefinery.data.sources import load_source

    count = sum(1 for _ in pathlib.Path(folder).glob("train/*/*.jpg"))

    def load() -> None:
        splits = make_splits(load_source(f"folder:{folder}", None, False), 0.1, seed=0)
        onehot_table(splits.train, splits.num_ids, splits.num_classes)
        drain(splits.val.batch(1024))
        drain(splits.test.batch(1024))

    return rate(load, count)


def main(rounds: int = 3, tar: pathlib.Path = SHARED_CIFAR, model_steps: int = 10) -> dict[str, float]:
    from krefinery.chain.experiment import prepare_experiment

    cores = len(os.sched_getaffinity(0))
    print(f"# Input pipeline as runs build it: CIFAR-10 JPEGs, 32x32x3, batch {BATCH}; {machine()}")
    if not tar.exists():
        raise SystemExit(f"needs {tar} (the project's shared data; --tar=PATH)")
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(["tar", "-xf", str(tar), "-C", folder], check=True)
        experiment = prepare_experiment(
            Config(dataset=f"folder:{folder}", batch_size=BATCH, epochs=1, warmup_epochs=0, verbose=0)
        )
        train_ds, trainer = experiment.training_batches(1), experiment.trainer_for(1)
        count = experiment.info.num_train
        drain(train_ds)  # Fill the cache; later epochs read it, as training does.
        trainer.fit(train_ds.take(2), verbose=0)

        def pipeline(deterministic: bool):
            def measure() -> float:
                apply_determinism(deterministic)
                return rate(lambda: drain(train_ds), count)

            return measure

        def model() -> float:
            apply_determinism(True)
            return rate(lambda: trainer.fit(train_ds.take(model_steps), verbose=0), model_steps * BATCH)

        rates = alternate(
            {"deterministic": pipeline(True), "not deterministic": pipeline(False), "model": model},
            rounds,
        )
        first = jpeg_first_pass(folder)
    rows = [
        (
            f"pipeline, op determinism {'on' if name == 'deterministic' else 'off'}",
            f"{rates[name]:8.1f} img/s = {rates[name] / cores:8.1f} img/s per core "
            f"(target >= 10,000); {rates[name] / rates['model']:.1f}x the model",
        )
        for name in ("deterministic", "not deterministic")
    ]
    rows.append(("model training step (the run's)", f"{rates['model']:8.1f} img/s"))
    rows.append(("first pass, decoding JPEGs", f"{first:8.1f} img/s = {first / cores:8.1f} per core"))
    report(f"median of {rounds} alternating rounds over {count} training images, {cores} cores", rows)
    return rates


if __name__ == "__main__":
    run_on_shared_images(main, __doc__)
