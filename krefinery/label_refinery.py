"""The refinery step as a Keras callback: each `fit` of a `Trainer` becomes one generation.

A library piece with no I/O and no TensorFlow: it talks to the `Trainer` only through
`use_teacher`, `set_refinement`, `teaching` and `reset_optimizer`, and to the data
through a `LabelTable`, the table of targets that training reads by example id.
"""

from __future__ import annotations

from typing import Callable, Protocol

import keras
import numpy as np

from krefinery.relabel import RefinedLabels


class LabelTable(Protocol):
    """The `[num_ids, classes]` targets that training reads by example id.

    Implemented by `pipeline.TFLabelTable` (a `tf.Variable` read by the tf.data pipeline)
    and `arrays.DeviceLabelTable` (a Keras variable beside in-memory images).
    """

    def refine(self, labeller: RefinedLabels) -> None:
        """Writes `labeller`'s refined labels of every training example, by id."""

    def values(self) -> np.ndarray:
        """The table as it is now."""

    def labelled(self, labeller: RefinedLabels) -> np.ndarray:
        """`values()` with the training rows replaced by `labeller`'s labels."""

    def reset(self) -> None:
        """Ground truth (one-hot training labels) back in."""


def generation_seed(seed: int, generation: int) -> int:
    """The weight-initialisation seed of a generation, derived from the run seed."""
    return int(np.random.SeedSequence([seed, generation]).generate_state(1)[0])


class LabelRefinery(keras.callbacks.Callback):
    """Makes each `fit` of a `Trainer` one Label Refinery generation.

    - `on_train_begin`: generation k starts from scratch: the classifier's weights are
      replaced by those of `build_classifier(k, generation_seed(seed, k))` and the optimizer's
      state (momenta, iteration count, hence the learning-rate schedule) by a fresh one's.
    - `on_train_end`, if generations remain: the trained classifier, in inference mode,
      refines the labels. Offline (the trainer has no teacher): `softmax(logits / T)`
      of every training example is written into the `labels` table by example id,
      which training reads. Online: the trained weights are copied into the frozen
      teacher of the next generation's trainer, which labels each augmented batch from
      then on.
      Then `on_relabel(k, previous, refined)`, if given, sees the `[num_ids, classes]`
      targets of the training examples before and after (online: the teacher's, un-augmented).

    `trainer_of(k)`, if given, is the trainer that fits generation k (each fit's own
    model), so that generations may differ in architecture: a refinery of its own shape
    labels for the students, online through a teacher slot of its shape. Without it, one
    trainer fits every generation.

    Example:

        refinery = LabelRefinery(onehot_table(splits.train, ...), build, generations=3)
        for generation in range(1, 4):
            trainer.fit(training_dataset(..., generation=generation, epochs=30), epochs=30,
                        steps_per_epoch=steps, callbacks=[refinery])
    """

    def __init__(
        self,
        labels: LabelTable,
        build_classifier: Callable[[int, int], keras.Model],
        generations: int,
        temperature: float = 1.0,
        alpha: float = 0.0,
        seed: int = 0,
        jit_compile: bool = False,
        on_relabel: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
        trainer_of: Callable[[int], keras.Model] | None = None,
    ):
        super().__init__()
        self.labels = labels
        self.build_classifier = build_classifier
        self.generations = generations
        self.temperature = temperature
        self.alpha = alpha
        self.seed = seed
        self.on_relabel = on_relabel
        self.trainer_of = trainer_of
        self.generation = 0
        # The targets the last relabel produced, as (generation, table): the next relabel's
        # "previous" labels, so online mode need not run the old teacher over the data again.
        self._last_refined: tuple[int, np.ndarray] | None = None
        self.jit_compile = jit_compile
        # One compiled labelling function per model labelled (the classifier, the teacher).
        self._labellers: dict[int, RefinedLabels] = {}

    def on_train_begin(self, logs=None):
        if self.generation == self.generations:
            raise RuntimeError(f"all {self.generations} generations have been trained already.")
        self.generation += 1
        self.start_fresh()

    def on_train_end(self, logs=None):
        if self.generation < self.generations:
            self.refine()

    def start_fresh(self) -> None:
        """New weights and a new optimizer state, in place, so compiled steps stay valid."""
        trainer = self.model
        fresh = self.build_classifier(self.generation, generation_seed(self.seed, self.generation))
        trainer.classifier.set_weights(fresh.get_weights())
        trainer.reset_optimizer()
        trainer.set_refinement(self.temperature, self.alpha)

    def restart(self) -> None:
        """Back to where the chain began: ground truth comes next, for generation 1."""
        self.generation = 0
        self._last_refined = None
        self._trainer(1).use_teacher(None)

    def continue_after(self, generation: int) -> None:
        """Puts the chain where it stood after `generation`, whose weights the classifier
        of its trainer holds (loaded from a store, say): its refined labels come next.

        No `on_relabel`: the labels before these are not at hand, and the relabel was
        observed when `generation` was first trained.
        """
        self.generation = generation
        self._last_refined = None
        self.set_model(self._trainer(generation))
        self.refine(observe=False)

    def refine(self, observe: bool = True) -> None:
        """Refined labels from the trainer's classifier, for the next generation."""
        trainer = self.model
        observe = observe and self.on_relabel is not None
        previous = None
        if observe:
            last = self._last_refined
            fresh = last is not None and last[0] == self.generation - 1
            previous = last[1] if fresh else self.labels_in_use(self.generation)
        student = self._trainer(self.generation + 1)
        student.set_refinement(self.temperature, self.alpha)
        if student.teacher is not None:
            student.use_teacher(trainer.classifier)
        else:
            self.labels.refine(self._labeller(trainer.classifier))
        if observe:
            refined = self.labels_in_use(self.generation + 1)
            self._last_refined = (self.generation, refined)
            self.on_relabel(self.generation, previous, refined)

    def labels_in_use(self, generation: int) -> np.ndarray:
        """The targets that `generation` trains on as things stand, as a
        `[num_ids, classes]` array.

        Online, these are the teacher's labels of the un-augmented images (training
        itself labels augmented ones); before the teacher is ready, the table's.
        """
        trainer = self._trainer(generation)
        if trainer.teaching:
            return self.labels.labelled(self._labeller(trainer.teacher))
        return self.labels.values()

    def _trainer(self, generation: int) -> keras.Model:
        return self.model if self.trainer_of is None else self.trainer_of(generation)

    def _labeller(self, model: keras.Model) -> RefinedLabels:
        """XLA if asked for and Keras compiles the training step with it (it does not with
        TensorFlow's op determinism on, for one)."""
        if id(model) not in self._labellers:
            jit_compile = self.jit_compile and self.model.jit_compile
            self._labellers[id(model)] = RefinedLabels(
                model, self.temperature, self.alpha, jit_compile
            )
        return self._labellers[id(model)]
