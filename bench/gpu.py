"""GPU check: ResNet-20 training throughput and a short CIFAR-sized refinery chain.

Written for the lent H200 machine, whose image has JAX and PyTorch but no TensorFlow
(and nothing can be installed there beyond a few carried wheels). It therefore runs the
project's own `build_resnet` on Keras 3's JAX backend, and the refinery chain through
Keras's portable API (fit on soft targets, predict, softmax at temperature T, a fresh
model per generation), beside a plain PyTorch loop for reference. The TensorFlow
training step itself is measured on the CPU by the other benchmarks.

    KERAS_BACKEND=jax python -m bench.gpu [--out=gpu.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from krefinery.resnet import build_resnet  # noqa: E402

SHAPE, CLASSES = (32, 32, 3), 10


def cifar_like(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic 32x32x3 images: a per-class template plus heavy noise."""
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(1234).uniform(0, 255, (CLASSES, *SHAPE))
    labels = rng.integers(0, CLASSES, num)
    noise = rng.normal(0, 90, (num, *SHAPE))
    images = np.clip(0.5 * templates[labels] + 0.5 * 127 + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int32)


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each epoch; the first includes XLA compilation."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._start, 2))


def keras_model(precision: str, seed: int, lr: float = 0.05, steps: int = 1000) -> keras.Model:
    keras.config.set_dtype_policy(precision)
    keras.utils.set_random_seed(seed)
    model = build_resnet(SHAPE, CLASSES, depth=20, weight_decay=1e-4)
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps)
    model.compile(
        keras.optimizers.SGD(schedule, momentum=0.9),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["categorical_accuracy"],
        jit_compile=True,
    )
    return model


def keras_rate(precision: str, batch: int, steps: int) -> float:
    images, labels = cifar_like(batch * steps, 0)
    targets = np.eye(CLASSES, dtype=np.float32)[labels]
    model = keras_model(precision, 0)
    model.fit(images[: 2 * batch], targets[: 2 * batch], batch_size=batch, verbose=0)
    start = time.perf_counter()
    model.fit(images, targets, batch_size=batch, verbose=0)
    return batch * steps / (time.perf_counter() - start)


def torch_rate(precision: str, batch: int, steps: int) -> float:
    from bench.torch_resnet import train_rate

    images, labels = cifar_like(batch * steps, 0)
    targets = np.eye(CLASSES, dtype=np.float32)[labels]
    return train_rate(images, targets, batch, steps, precision, device="cuda", warmup=5)


def chain(
    precision: str,
    batch: int,
    generations: int,
    epochs: int,
    temperature: float,
    num_train: int = 50_000,
) -> list[dict]:
    """Generation k+1 trains a fresh ResNet-20 on generation k's softmax(logits / T)."""
    images, labels = cifar_like(num_train + 5_000, 1)
    train_x, train_y = images[:num_train], labels[:num_train]
    val_x, val_y = images[num_train:], labels[num_train:]
    targets = np.eye(CLASSES, dtype=np.float32)[train_y]
    steps = epochs * -(-len(train_x) // batch)
    records = []
    for generation in range(1, generations + 1):
        model = keras_model(precision, seed=generation, lr=0.1, steps=steps)
        timer = EpochTimer()
        history = model.fit(
            train_x, targets, batch_size=batch, epochs=epochs, verbose=0, callbacks=[timer],
            validation_data=(val_x, np.eye(CLASSES, dtype=np.float32)[val_y]),
        )
        start = time.perf_counter()
        logits = model.predict(train_x, batch_size=4096, verbose=0).astype(np.float64) / temperature
        logits -= logits.max(axis=1, keepdims=True)
        refined = np.exp(logits)
        refined /= refined.sum(axis=1, keepdims=True)
        relabel_seconds = time.perf_counter() - start
        records.append(
            {
                "generation": generation,
                "val_accuracy": float(history.history["val_categorical_accuracy"][-1]),
                "epoch_seconds": timer.seconds,
                "images_per_second_after_first_epoch": (
                    round(len(train_x) / float(np.median(timer.seconds[1:])), 1)
                    if epochs > 1 else None
                ),
                "relabel_seconds": round(relabel_seconds, 2),
                "label_agreement": float(np.mean(refined.argmax(1) == train_y)),
            }
        )
        print(json.dumps(records[-1]), flush=True)
        targets = refined.astype(np.float32)
    return records


def main(out: str, quick: bool, budget_s: float = 420) -> dict:
    import jax

    begin = time.perf_counter()
    results: dict = {"jax_devices": [str(d) for d in jax.devices()], "keras": keras.__version__}
    print(json.dumps(results), flush=True)

    def save() -> None:
        with open(out, "w") as handle:
            json.dump(results, handle, indent=2)

    steps = {128: 20 if quick else 200, 1024: 5 if quick else 50}
    for framework, measure in (("keras_jax", keras_rate), ("torch", torch_rate)):
        for precision in ("float32", "bfloat16"):
            for batch, count in steps.items():
                name = f"{framework}/{precision}/batch{batch}"
                policy = "mixed_bfloat16" if precision == "bfloat16" and framework == "keras_jax" else precision
                if time.perf_counter() - begin > budget_s / 2:
                    results[name] = "skipped: over the time budget"
                    continue
                try:
                    results[name] = round(measure(policy, batch, count), 1)
                except Exception:  # Keep the other figures if one setting fails.
                    results[name] = traceback.format_exc(limit=3)
                print(name, results[name], flush=True)
                save()
    try:
        results["chain"] = chain(
            "mixed_bfloat16", 512, generations=2 if quick else 3, epochs=1 if quick else 4,
            temperature=1.0, num_train=2_000 if quick else 50_000,
        )
    except Exception:
        results["chain"] = traceback.format_exc(limit=5)
        print(results["chain"], flush=True)
    results["total_seconds"] = round(time.perf_counter() - begin, 1)
    save()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu.json")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes, to check the script.")
    args = parser.parse_args()
    main(args.out, args.quick)
