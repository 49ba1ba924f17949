"""GPU check: our own chain on in-memory data (krefinery.data.memory), with Keras on JAX, no TensorFlow.

Written for the lent H200 machine, whose image has JAX and PyTorch but no TensorFlow (and
receives only a few carried wheels; see bench/RESULTS.md, GPU). It times the project
itself: `build_resnet(depth=20)`, `Trainer` (Keras's train step around our
`compute_loss`), the chain's runner and `memory.InMemoryData` (images, labels and label
table on the device, batches made there), as `chain.runner.train_chain` runs them.

1. Step throughput, float32 and mixed_bfloat16: rounds of one full epoch each, the two
   precisions alternating, after one epoch each that compiles; median images/s.
2. A chain of `--generations` (3) x `--epochs` (100) on 50,000 CIFAR-sized synthetic
   images in mixed_bfloat16, wall time from the start of `train_chain` to its end,
   compilation, relabelling and the store included, plus seconds per epoch and each
   generation's training time.

    KERAS_BACKEND=jax python -m bench.gpu [--out=gpu.json] [--epochs=100] [--quick]

The issue's targets on one H200: at least 60,000 img/s in bfloat16, and the chain of
3 x 100 epochs under 180 s. `--quick` runs toy sizes, to check the script on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from krefinery.chain.experiment import prepare_experiment  # noqa: E402
from krefinery.chain.runner import train_chain  # noqa: E402
from krefinery.config import Config  # noqa: E402
from krefinery.data.memory import InMemoryData, MemoryFeed  # noqa: E402

SHAPE, CLASSES = (32, 32, 3), 10
PRECISIONS = ("float32", "mixed_bfloat16")


def cifar_like(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic 32x32x3 images: a per-class template plus heavy noise."""
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(1234).uniform(0, 255, (CLASSES, *SHAPE))
    labels = rng.integers(0, CLASSES, num)
    noise = rng.normal(0, 90, (num, *SHAPE))
    images = np.clip(0.5 * templates[labels] + 0.5 * 127 + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int32)


def settle(trainer: keras.Model) -> None:
    """Waits for the device: JAX dispatches steps asynchronously."""
    keras.ops.convert_to_numpy(trainer.classifier.trainable_variables[0].value)


def step_rates(data: InMemoryData, validation, batch: int, rounds: int, steps: int | None) -> dict:
    """Images/s of our trainer per precision, alternating, median over `rounds`."""
    trainers = {}
    for precision in PRECISIONS:
        config = Config(depth=20, batch_size=batch, epochs=rounds + 1, precision=precision, verbose=0)
        feed = MemoryFeed.of_arrays(data, validation, batch, config.seed)
        trainers[precision] = prepare_experiment(config, feed).trainer_for(1)
    steps = steps or data.steps_per_epoch(batch)
    stream = {p: data.batches(batch, seed=0) for p in PRECISIONS}
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for round_ in range(rounds + 1):  # Round 0 compiles.
        for precision in PRECISIONS:
            trainer = trainers[precision]
            start = time.perf_counter()
            trainer.fit(stream[precision], epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
            settle(trainer)
            seconds[precision].append(time.perf_counter() - start)
    images = steps * batch
    result = {"batch": batch, "steps_per_round": steps, "compile_round_seconds": {}}
    for precision in PRECISIONS:
        result["compile_round_seconds"][precision] = round(seconds[precision][0], 2)
        rates = [images / s for s in seconds[precision][1:]]
        result[precision] = {"median": round(statistics.median(rates), 1),
                             "rounds": [round(r, 1) for r in rates]}
    result["bf16_over_fp32"] = round(result["mixed_bfloat16"]["median"] / result["float32"]["median"], 3)
    return result


class Timer(keras.callbacks.Callback):
    """Wall seconds of each epoch."""

    def __init__(self):
        super().__init__()
        self.epochs: list[list[float]] = []

    def on_train_begin(self, logs=None):
        self.epochs.append([])

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[-1].append(round(time.perf_counter() - self._epoch, 3))


def chain(data: InMemoryData, validation, batch: int, generations: int, epochs: int) -> dict:
    config = Config(depth=20, batch_size=batch, epochs=epochs, generations=generations,
                    precision="mixed_bfloat16", verbose=0)
    timer = Timer()
    start = time.perf_counter()
    _, records = train_chain(data, config, validation, callbacks=lambda generation: [timer])
    seconds = time.perf_counter() - start  # The best generation was read back: settled.
    return {
        "generations": generations,
        "epochs": epochs,
        "batch": batch,
        "precision": config.precision,
        "num_train": data.num_examples,
        "seconds_including_compile": round(seconds, 2),
        "generation_training_seconds": [r["seconds"] for r in records],
        "first_epoch_seconds": [e[0] for e in timer.epochs],
        "median_epoch_seconds": [round(statistics.median(e), 3) for e in timer.epochs],
        "images_per_second_median_epoch": [
            round(data.num_examples / statistics.median(e), 1) for e in timer.epochs
        ],
        "val_accuracy": [round(r["val_accuracy"], 4) for r in records],
        "label_entropy": [round(r["train_label_entropy"], 4) for r in records],
    }


def main(out: str, quick: bool, epochs: int, generations: int, batch: int, rounds: int) -> dict:
    import jax

    results: dict = {
        "devices": [str(d) for d in jax.devices()],
        "keras": keras.__version__,
        "jax": jax.__version__,
        "tensorflow_loaded": "tensorflow" in sys.modules,
        "command": " ".join(sys.argv),
    }
    print(json.dumps(results), flush=True)

    def save() -> None:
        with open(out, "w") as handle:
            json.dump(results, handle, indent=2)

    num_train, num_val = (512, 256) if quick else (50_000, 5_000)
    begin = time.perf_counter()
    images, labels = cifar_like(num_train + num_val, 1)
    data = InMemoryData(images[:num_train], labels[:num_train], num_classes=CLASSES, flip=True)
    results["data_seconds"] = round(time.perf_counter() - begin, 2)
    validation = (images[num_train:], labels[num_train:])
    results["step"] = step_rates(data, validation, batch, rounds, steps=3 if quick else None)
    print(json.dumps({"step": results["step"]}), flush=True)
    save()
    results["chain"] = chain(data, validation, batch, generations, epochs)
    print(json.dumps({"chain": results["chain"]}), flush=True)
    results["tensorflow_loaded"] = "tensorflow" in sys.modules
    results["total_seconds"] = round(time.perf_counter() - begin, 1)
    save()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu.json")
    parser.add_argument("--quick", action="store_true", help="Toy sizes, to check the script.")
    parser.add_argument("--epochs", type=int, default=None, help="Per generation (100; quick 2).")
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="256; quick 64.")
    parser.add_argument("--rounds", type=int, default=None, help="Throughput rounds (5; quick 1).")
    args = parser.parse_args()
    main(
        args.out,
        args.quick,
        epochs=args.epochs or (2 if args.quick else 100),
        generations=args.generations,
        batch=args.batch or (64 if args.quick else 256),
        rounds=args.rounds or (1 if args.quick else 5),
    )
