"""The training step: a classifier learns from soft targets, scored against ground truth.

`Trainer` is a `keras.Model` that wraps the classifier (and, for online relabelling, a
frozen teacher) and overrides only `compute_loss` and `compute_metrics`, written with
`keras.ops`, as Keras's own `keras.distillation.Distiller` does. Keras's train step then
does the rest on whichever backend runs it (TensorFlow, JAX or PyTorch): gradients, loss
scaling under `mixed_float16`, the optimizer update, and the `loss` metric; `fit` brings
progress bars, callbacks and TensorBoard.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops

from krefinery.config import Config, Refinement
from krefinery.core.losses import entropy, refined_labels, soft_target_crossentropy

TRAIN_METRICS = ("loss", "accuracy", "label_agreement", "label_entropy")
EVAL_METRICS = ("loss", "accuracy")


class Trainer(keras.Model):
    """Trains `classifier` on each batch's `target`, or on a frozen teacher's refined labels.

    Batches are dicts `{"image", "label", "target"}` (see `pipeline.training_dataset`);
    evaluation batches need only `"image"` and `"label"`.
    Training metrics: `loss` (soft-target cross-entropy plus the weight-decay penalty),
    `accuracy` (vs ground truth, on augmented images),
    `label_agreement` (argmax of the targets vs ground truth) and `label_entropy`
    (nats), the last two describing the labels this generation actually trained on.
    Evaluation reports `loss` (cross-entropy vs ground truth, no penalty) and `accuracy`.

    `teacher`, if given, is the frozen slot that online relabelling copies trained weights
    into (`use_teacher`): it must have the architecture of the models copied from, which
    may differ from the classifier's (a deeper model may label for a smaller one).

    The methods that change what the next `fit` does (`start_afresh`, `restore`,
    `use_teacher`) are called between fits by the chain's owner, never from inside one.
    """

    def __init__(self, classifier: keras.Model, teacher: keras.Model | None = None, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self._teaching: Refinement | None = None
        # Which step Keras is tracing (or, on PyTorch, running): compute_metrics reports
        # the label figures for training steps only.
        self._step_trains = True
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.label_agreement = keras.metrics.Mean(name="label_agreement")
        self.label_entropy = keras.metrics.Mean(name="label_entropy")

    @property
    def teaching(self) -> Refinement | None:
        """The refinement with which the frozen teacher labels every training batch
        (online relabelling), or None: training reads each batch's `target`."""
        return self._teaching

    def use_teacher(self, model: keras.Model | None, refinement: Refinement | None = None) -> None:
        """`None`: train on each batch's `target`. A model: its weights, copied into the
        frozen teacher, label every batch from now on, refined by `refinement`."""
        if model is not None:
            if self.teacher is None:
                raise ValueError("this Trainer has no teacher slot: build it with teacher=.")
            if refinement is None:
                raise ValueError("a teacher labels with a refinement: pass refinement=.")
            self.teacher.set_weights(model.get_weights())
        teaching = None if model is None else refinement
        if teaching != self._teaching:
            self._teaching = teaching
            self._retrace()

    def start_afresh(self, fresh: keras.Model) -> None:
        """A new generation's start: `fresh`'s weights (a model of the classifier's
        architecture) and a fresh optimizer state, in place, so compiled steps stay valid."""
        self.classifier.set_weights(fresh.get_weights())
        self.reset_optimizer()

    def training_state(self) -> list[keras.Variable]:
        """What training continues from: the weights (the classifier's, batch-norm
        statistics included, and the teacher's) and the optimizer's variables (momenta,
        iteration count, loss scale), built if they were not yet."""
        if not self.optimizer.built:
            self.optimizer.build(self.classifier.trainable_variables)
        return [*self.weights, *self.optimizer.variables]

    def restore(self, arrays: Sequence[np.ndarray]) -> None:
        """Puts back a `training_state()` saved as arrays (a checkpoint)."""
        variables = self.training_state()
        if [tuple(v.shape) for v in variables] != [tuple(a.shape) for a in arrays]:
            raise ValueError("the saved training state does not fit this trainer.")
        for variable, value in zip(variables, arrays):
            variable.assign(value)

    def reset_optimizer(self) -> None:
        """A fresh optimizer state, in place: momenta, iteration count (hence the learning
        rate schedule) and, under `mixed_float16`, the loss scale. Compiled steps stay valid."""
        optimizer = self.optimizer
        if not optimizer.built:
            return
        blank = optimizer.__class__.from_config(optimizer.get_config())
        blank.build(self.trainable_variables)
        for variable, initial in zip(optimizer.variables, blank.variables, strict=True):
            variable.assign(initial.value)

    def _retrace(self) -> None:
        """Whether a teacher labels, and its temperature and alpha, are fixed in the
        traced step, so it is traced again when they change. Rebuilt in place rather than
        dropped, so that this also works from a callback's `on_train_begin` (as
        `LabelRefinery` calls it), where Keras has already made the step."""
        if self.train_function is not None:
            self.make_train_function(force=True)

    def call(self, inputs, training=False):
        images = inputs["image"] if isinstance(inputs, dict) else inputs
        return self.classifier(images, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        self._step_trains = training
        if y_pred is None:
            y_pred = self(x, training=training)
        labels = x["label"]
        # tf.distribute sums the replicas' gradients: each returns its share of the loss,
        # as Keras's own losses do (`keras.losses.Loss` divides by the replica count, and
        # Keras's train step multiplies the `loss` it reports back by it). Every replica
        # gets as many examples (`distribute.Replication.batch_multiple`), so the shares
        # add up to the global batch's loss and its gradient to one device's.
        replicas = replicas_in_sync()
        if not training:
            classes = ops.shape(y_pred)[-1]
            loss = soft_target_crossentropy(ops.one_hot(labels, classes), y_pred)
            return loss / replicas if replicas > 1 else loss
        if self._teaching is not None:
            teacher_logits = self.teacher(x["image"], training=False)
            targets = refined_labels(
                teacher_logits, labels, self._teaching.temperature, self._teaching.alpha
            )
            targets = ops.stop_gradient(targets)
        else:
            targets = ops.cast(x["target"], "float32")
        loss = soft_target_crossentropy(targets, y_pred)
        # Weight decay (the classifier's kernel regularisers) and any other added losses.
        for penalty in self.losses:
            loss = loss + ops.cast(penalty, "float32")
        if replicas > 1:
            loss = loss / replicas
        agree = ops.argmax(targets, axis=-1) == ops.cast(labels, "int32")
        self.label_agreement.update_state(ops.cast(agree, "float32"))
        self.label_entropy.update_state(entropy(targets))
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.accuracy.update_state(x["label"], y_pred)
        names = TRAIN_METRICS if self._step_trains else EVAL_METRICS
        return {m.name: m.result() for m in self.metrics if m.name in names}


def replicas_in_sync() -> int:
    """How many replicas run this step under tf.distribute, each on its share of the
    global batch; 1 elsewhere (one device, or JAX's SPMD step over the global batch)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf  # Only here: this module stays importable without it.

    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


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
