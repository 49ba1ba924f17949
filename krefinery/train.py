"""The training step: a classifier learns from soft targets, scored against ground truth.

`Trainer` follows the Keras knowledge-distillation example: a `keras.Model` that wraps
the classifier (and, for online relabelling, a frozen teacher) and overrides
`train_step`/`test_step`, so `fit` brings progress bars, callbacks and TensorBoard.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from krefinery.config import Config
from krefinery.losses import entropy, refined_labels, soft_target_crossentropy


class Trainer(keras.Model):
    """Trains `classifier` on each batch's `target`, or on a frozen teacher's refined labels.

    Batches are dicts `{"image", "label", "target"}` (see `pipeline.training_dataset`).
    Training metrics: `loss` (soft-target cross-entropy plus the weight-decay penalty),
    `accuracy` (vs ground truth, on augmented images),
    `label_agreement` (argmax of the targets vs ground truth) and `label_entropy`
    (nats), the last two describing the labels this generation actually trained on.
    Evaluation reports `loss` (cross-entropy vs ground truth, no penalty) and `accuracy`.
    """

    def __init__(
        self,
        classifier: keras.Model,
        teacher: keras.Model | None = None,
        temperature: float = 1.0,
        alpha: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.temperature = temperature
        self.alpha = alpha
        self._teaching = False
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.label_agreement = keras.metrics.Mean(name="label_agreement")
        self.label_entropy = keras.metrics.Mean(name="label_entropy")

    @property
    def teaching(self) -> bool:
        """Whether the frozen teacher labels every batch (else: each batch's `target`)."""
        return self._teaching

    def use_teacher(self, model: keras.Model | None) -> None:
        """`None`: train on each batch's `target`. A model: copy its weights into the
        frozen teacher, which labels every batch from then on (online relabelling)."""
        if model is not None:
            if self.teacher is None:
                raise ValueError("this Trainer was built without a teacher (offline relabelling).")
            self.teacher.set_weights(model.get_weights())
        if self._teaching != (model is not None):
            self._teaching = model is not None
            self._retrace()  # The step is traced with or without the teacher.

    def set_refinement(self, temperature: float, alpha: float) -> None:
        """The temperature and alpha the teacher's labels are refined with."""
        if (self.temperature, self.alpha) != (temperature, alpha):
            self.temperature, self.alpha = temperature, alpha
            self._retrace()  # Both are constants of the traced step.

    def _retrace(self) -> None:
        # Rebuilt in place rather than dropped, so this works inside `fit` too (from a
        # callback's `on_train_begin`), where Keras has already made the step.
        if self.train_function is not None:
            self.make_train_function(force=True)

    def reset_optimizer(self) -> None:
        """A fresh optimizer state (momenta, iteration count, loss scale), in place, so
        compiled steps stay valid."""
        optimizer = self.optimizer
        if not optimizer.built:
            return
        blank = optimizer.__class__.from_config(optimizer.get_config())
        blank.build(self.classifier.trainable_variables)
        for variable, initial in zip(optimizer.variables, blank.variables, strict=True):
            variable.assign(initial.value)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy, self.label_agreement, self.label_entropy]

    def call(self, inputs, training=False):
        images = inputs["image"] if isinstance(inputs, dict) else inputs
        return self.classifier(images, training=training)

    def train_step(self, batch):
        images, labels, targets = batch["image"], batch["label"], batch["target"]
        if self._teaching:
            teacher_logits = self.teacher(images, training=False)
            targets = refined_labels(teacher_logits, labels, self.temperature, self.alpha)
        with tf.GradientTape() as tape:
            logits = self.classifier(images, training=True)
            loss = soft_target_crossentropy(targets, logits)
            if self.classifier.losses:
                loss += tf.add_n(self.classifier.losses)
            # A no-op except under a LossScaleOptimizer (mixed_float16), which unscales in apply.
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.classifier.trainable_variables
        self.optimizer.apply(tape.gradient(scaled_loss, variables), variables)
        self.loss_tracker.update_state(loss)
        self.accuracy.update_state(labels, logits)
        agree = tf.cast(tf.argmax(targets, -1, output_type=labels.dtype) == labels, tf.float32)
        self.label_agreement.update_state(agree)
        self.label_entropy.update_state(entropy(targets))
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, batch):
        labels = batch["label"]
        logits = self.classifier(batch["image"], training=False)
        targets = tf.one_hot(labels, tf.shape(logits)[-1])
        self.loss_tracker.update_state(soft_target_crossentropy(targets, logits))
        self.accuracy.update_state(labels, logits)
        return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy.result()}


def make_optimizer(
    config: Config, steps_per_epoch: int, precision: str = "float32"
) -> keras.optimizers.Optimizer:
    """SGD with momentum on a per-generation schedule (weight decay lives in the model).

    `cosine`: linear warm-up, then cosine decay to zero; works for short and long runs.
    `step`: the ResNet paper's schedule, learning rate / 10 at 50% and again at 75%.
    Under `mixed_float16` the SGD is wrapped in dynamic loss scaling, without which
    small float16 gradients underflow to zero.
    """
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if config.lr_schedule == "step":
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries=[total // 2, (3 * total) // 4],
            values=[config.learning_rate, config.learning_rate / 10, config.learning_rate / 100],
        )
    elif warmup:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, total - warmup, warmup_target=config.learning_rate, warmup_steps=warmup
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, total)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)
    if precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
