"""Keras 3's BatchNormalization vs the project's (`krefinery.core.batchnorm`: TensorFlow's
fused kernel) in the ResNet's training step.

On the TensorFlow backend Keras 3 computes batch normalization from primitive ops
(moments, then `tf.nn.batch_normalization`; under `mixed_bfloat16` it also casts the
activations to float32 and back), and the profile (bench/profile_step.py) shows these
elementwise ops taking about as much op time as the convolutions. The project's layer is
the same layer (same weights, same moving-average rule) running `FusedBatchNormV3`,
oneDNN's single kernel forward and backward. Both ResNet-20s are a run's trainers
(`run_trainer`), alternating within each round.

    python -m bench.fused_batchnorm [--precisions=float32,mixed_bfloat16] [--rounds=3]
"""

from __future__ import annotations

import argparse

from bench.common import (
    BATCH,
    BATCH_NORMS,
    alternate,
    batch_norm,
    machine,
    rate,
    report,
    run_trainer,
)
from bench.train_step import batches, step_config


def main(precisions: str = "float32,mixed_bfloat16", rounds: int = 3, steps: int = 10) -> dict[str, float]:
    print(f"# Keras BatchNormalization vs the fused kernel: ResNet-20, batch {BATCH}; {machine()}")
    data, _ = batches(steps)
    contenders = {}
    for precision in precisions.split(","):
        for name in BATCH_NORMS:
            with batch_norm(name):
                trainer, _ = run_trainer(step_config(precision, False, True), steps)
            trainer.fit(data.take(2), verbose=0)
            contenders[f"{precision} {name}"] = lambda t=trainer: rate(
                lambda: t.fit(data, shuffle=False, verbose=0), steps * BATCH
            )
    medians = alternate(contenders, rounds)
    rows = []
    for precision in precisions.split(","):
        fused, plain = medians[f"{precision} fused"], medians[f"{precision} keras"]
        rows.append((precision, f"keras {plain:6.1f}  fused {fused:6.1f} img/s  fused/keras {fused / plain:.2f}x"))
    report(f"images/s, median of {rounds} alternating rounds of {steps} steps (deterministic, no XLA)", rows)
    return medians


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.precisions, args.rounds)
