"""The refinery step as a Keras callback: each `fit` of a `Trainer` becomes one generation.

A thin shell for library users over the calls the durable chain makes itself
(`core.refinement`): the callback owns its own count of generations, and talks to the
`Trainer` only through its methods and to the data through a `LabelTable`.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np

from krefinery.config import Refinement
from krefinery.core.refinement import LabelTable, Relabeller, generation_seed


class LabelRefinery(keras.callbacks.Callback):
    """Makes each `fit` of a `Trainer` one Label Refinery generation.

    - `on_train_begin`: generation k starts from scratch: the classifier's weights are
      replaced by those of `build_classifier(k, generation_seed(seed, k))` and the optimizer's
      state (momenta, iteration count, hence the learning-rate schedule) by a fresh one's.
    - `on_train_end`, if generations remain: the trained classifier, in inference mode,
      refines the labels (`Relabeller.hand_on`). Offline (the trainer has no teacher):
      its refined labels of every training example are written into the `labels` table
      by example id, which training reads. Online: the trained weights are copied into
      the frozen teacher of the next generation's trainer, which labels each augmented
      batch from then on.
      Then `on_relabel(k, previous, refined)`, if given, sees the `[num_ids, classes]`
      targets of the training examples before and after (online: the teacher's, un-augmented).

    `trainer_of(k)`, if given, is the trainer that fits generation k (each fit's own
    model), so that generations may differ in architecture: a refinery of its own shape
    labels for the students, online through a teacher slot of its shape. Without it, one
    trainer fits every generation.

    Example:

        refinery = LabelRefinery(onehot_table(splits.train, ...), build, Refinement(generations=3))
        for generation in range(1, 4):
            trainer.fit(training_dataset(..., generation=generation, epochs=30), epochs=30,
                        steps_per_epoch=steps, callbacks=[refinery])
    """

    def __init__(
        self,
        labels: LabelTable,
        build_classifier: Callable[[int, int], keras.Model],
        refinement: Refinement,
        seed: int = 0,
        jit_compile: bool = False,
        on_relabel: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
        trainer_of: Callable[[int], keras.Model] | None = None,
    ):
        super().__init__()
        self.relabeller = Relabeller(labels, jit_compile)
        self.build_classifier = build_classifier
        self.refinement = refinement
        self.seed = seed
        self.on_relabel = on_relabel
        self.trainer_of = trainer_of
        self.generation = 0
        # The targets the last relabel produced: the next relabel's "previous" labels, so
        # online mode need not run the old teacher over the data again.
        self._last_refined: np.ndarray | None = None

    def on_train_begin(self, logs=None):
        if self.generation == self.refinement.generations:
            raise RuntimeError(f"all {self.refinement.generations} generations have been trained already.")
        self.generation += 1
        if self.generation == 1:
            self.relabeller.ground_truth(self.model)
            self._last_refined = None
        fresh = self.build_classifier(self.generation, generation_seed(self.seed, self.generation))
        self.model.start_afresh(fresh)

    def on_train_end(self, logs=None):
        if self.generation == self.refinement.generations:
            return
        student = self._trainer(self.generation + 1)
        previous = None
        if self.on_relabel is not None:
            previous = self._last_refined
            if previous is None:
                previous = self.relabeller.labels_in_use(self.model)
        self.relabeller.hand_on(self.model.classifier, student, self.refinement)
        if self.on_relabel is not None:
            self._last_refined = self.relabeller.labels_in_use(student)
            self.on_relabel(self.generation, previous, self._last_refined)

    def _trainer(self, generation: int) -> keras.Model:
        return self.model if self.trainer_of is None else self.trainer_of(generation)
