"""Benchmark 15: the paper's input pipeline at 64x64 (random-resized crops, flips, folders
decoded as they are read) against the cached one, and against the networks it feeds.

Each pipeline is the one a run builds (`experiment.prepare_experiment`) on the first 200
JPEGs per class of the shared CIFAR-10 folder (2,000 images of 32x32, resized to 64x64),
batch 64, augmentation on:

- `tfdata, translate`: decoded once and cached, the CIFAR crop;
- `tfdata, inception`: cached, random-resized crops and flips (`--crop=inception --flip`);
- `stream, inception`: the same crops on files decoded and resized whenever they are read
  (`--input=stream`), as a dataset larger than memory trains.

Each is drained for one epoch, alternating with the training step of MobileNet-0.25 and
ResNet-18 at 64x64 (float32, the run's settings otherwise); figures are img/s, medians.

    python -m bench.paper_input [--rounds=3] [--tar=../shared/data/cifar10-train-1000.tar]
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile

from bench.common import (
    SHARED_CIFAR,
    alternate,
    machine,
    rate,
    report,
    run_on_shared_images,
)
from krefinery.config import Config

PER_CLASS = 200
BATCH = 64
PIPELINES = {
    "tfdata, translate": dict(input="tfdata", crop="translate"),
    "tfdata, inception": dict(input="tfdata", crop="inception", flip=True),
    "stream, inception": dict(input="stream", crop="inception", flip=True),
}
NETWORKS = ("mobilenet_0.25", "resnet18")
MODEL_STEPS = 10


def subset(tar: pathlib.Path, folder: pathlib.Path) -> int:
    """The first PER_CLASS images of each class of `tar`, as `folder/train/<class>/`."""
    whole = folder / "whole"
    whole.mkdir()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(whole)], check=True)
    count = 0
    for class_folder in sorted((whole / "train").iterdir()):
        target = folder / "data" / "train" / class_folder.name
        target.mkdir(parents=True)
        for image in sorted(class_folder.iterdir(), key=lambda p: int(p.stem))[:PER_CLASS]:
            shutil.copy(image, target)
            count += 1
    return count


def main(rounds: int = 3, tar: pathlib.Path = SHARED_CIFAR) -> dict[str, float]:
    from krefinery.chain.experiment import prepare_experiment

    print(f"# The paper's input pipeline at 64x64, batch {BATCH}; {machine()}")
    if not tar.exists():
        raise SystemExit(f"needs {tar} (the project's shared data; --tar=PATH)")
    with tempfile.TemporaryDirectory() as scratch:
        subset(tar, pathlib.Path(scratch))
        common = dict(
            dataset=f"folder:{scratch}/data", image_size="64x64", batch_size=BATCH, epochs=1,
            warmup_epochs=0, verbose=0, precision="float32",
        )
        contenders = {}
        for name, settings in PIPELINES.items():
            experiment = prepare_experiment(Config(**common, **settings))
            batches, count = experiment.training_batches(1), experiment.info.num_train
            for _ in batches:  # Fill the cache (tfdata); later epochs read it, as training does.
                pass
            contenders[name] = (lambda batches, count: lambda: rate(lambda: [None for _ in batches], count))(
                batches, count
            )
        for arch in NETWORKS:
            experiment = prepare_experiment(Config(**common, arch=arch, input="tfdata", crop="inception", flip=True))
            trainer, batches = experiment.trainer_for(1), experiment.training_batches(1)
            trainer.fit(batches.take(2), verbose=0)  # Compiled before it is timed.
            contenders[f"{arch} step"] = (lambda trainer, batches: lambda: rate(
                lambda: trainer.fit(batches.take(MODEL_STEPS), verbose=0), MODEL_STEPS * BATCH
            ))(trainer, batches)
        rates = alternate(contenders, rounds)
    cores = len(os.sched_getaffinity(0))
    rows = [
        (
            name,
            f"{value:8.1f} img/s = {value / cores:7.1f} per core; "
            + ", ".join(f"{value / rates[f'{arch} step']:.1f}x {arch}'s step" for arch in NETWORKS),
        )
        for name, value in rates.items()
        if name in PIPELINES
    ]
    rows += [(name, f"{rates[name]:8.1f} img/s") for name in rates if name not in PIPELINES]
    report(f"median of {rounds} alternating rounds, {cores} cores", rows)
    return rates


if __name__ == "__main__":
    run_on_shared_images(main, __doc__)
