"""An experiment, not a project feature: Keras 3's BatchNormalization vs TensorFlow's fused kernel.

On the TensorFlow backend Keras 3 computes batch normalization from primitive ops
(moments, then `tf.nn.batch_normalization`; under `mixed_bfloat16` it also casts the
activations to float32 and back), and the profile (bench/profile_step.py) shows these
elementwise ops taking about as much op time as the convolutions. `FusedBatchNorm`
below is the same layer (same weights, same moving-average rule) running
`tf.compat.v1.nn.fused_batch_norm`, oneDNN's single kernel forward and backward. Both
ResNet-20s are run's trainers (`run_trainer`), alternating within each round.

    python -m bench.fused_batchnorm [--precisions=float32,mixed_bfloat16] [--rounds=3]
"""

from __future__ import annotations

import argparse

import tensorflow as tf
from keras import layers

from bench.common import BATCH, alternate, machine, rate, report, run_trainer
from bench.train_step import batches, step_config


class FusedBatchNorm(layers.BatchNormalization):
    """Keras's BatchNormalization on NHWC images, through TensorFlow's fused kernel."""

    def call(self, inputs, training=None, mask=None):
        if mask is not None or len(inputs.shape) != 4:
            return super().call(inputs, training=training, mask=mask)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True
            )
            # The kernel returns the unbiased variance; Keras averages the biased one.
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
            variance *= (count - 1.0) / count
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
            return outputs
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
            epsilon=self.epsilon, is_training=False,
        )
        return outputs


def main(precisions: str = "float32,mixed_bfloat16", rounds: int = 3, steps: int = 10) -> dict[str, float]:
    print(f"# Keras BatchNormalization vs the fused kernel: ResNet-20, batch {BATCH}; {machine()}")
    data, _ = batches(steps)
    contenders = {}
    keras_batchnorm = layers.BatchNormalization
    for precision in precisions.split(","):
        for name, layer in (("keras", keras_batchnorm), ("fused", FusedBatchNorm)):
            layers.BatchNormalization = layer  # build_resnet looks the class up at build time.
            try:
                trainer, _ = run_trainer(step_config(precision, False, True), steps)
            finally:
                layers.BatchNormalization = keras_batchnorm
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
