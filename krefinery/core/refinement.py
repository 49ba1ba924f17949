"""The refinery step's pieces, called in order by whoever owns a chain.

A chain's generation k starts afresh (`Trainer.start_afresh` with a model built from
`generation_seed(seed, k)`), trains, and then hands its labels on to generation k + 1
(`Relabeller.hand_on`). `chain.runner.ChainRunner` calls these explicitly for the
durable chain; `LabelRefinery` calls them from a Keras callback for library users. Both
read the chain's refinement from one frozen `Refinement`.
"""

from __future__ import annotations

from typing import Protocol

import keras
import numpy as np

from krefinery.config import Refinement
from krefinery.core.relabel import RefinedLabels
from krefinery.core.trainer import Trainer
from krefinery.progress import Progress


class LabelTable(Protocol):
    """The `[num_ids, classes]` targets that training reads by example id.

    Implemented by `data.pipeline.TFLabelTable` (a `tf.Variable` read by the tf.data
    pipeline) and `data.memory.DeviceLabelTable` (a Keras variable beside in-memory images).
    """

    @property
    def size(self) -> int:
        """How many training examples a relabel labels."""

    def refine(self, labeller: RefinedLabels, progress: Progress | None = None) -> None:
        """Writes `labeller`'s refined labels of every training example, by id, adding
        each batch's examples to `progress`."""

    def values(self) -> np.ndarray:
        """The table as it is now."""

    def labelled(self, labeller: RefinedLabels, progress: Progress | None = None) -> np.ndarray:
        """`values()` with the training rows replaced by `labeller`'s labels."""

    def reset(self) -> None:
        """Ground truth (one-hot training labels) back in."""


def generation_seed(seed: int, generation: int) -> int:
    """The weight-initialisation seed of a generation, derived from the run seed."""
    return int(np.random.SeedSequence([seed, generation]).generate_state(1)[0])


class Relabeller:
    """Gives each generation its targets: the ground truth, or a trained model's labels.

    Offline (the student trainer has no teacher slot) the model labels every training
    example once, into the label table; online its weights go into the student's frozen
    teacher, which labels every batch. One compiled labelling pass is kept per (model,
    refinement), so relabelling traces once however many generations it serves. A pass
    over the training images shows its progress as `verbose` asks (`krefinery.progress`).
    """

    def __init__(self, labels: LabelTable, jit_compile: bool = False, verbose: int = 0):
        self.labels = labels
        self.jit_compile = jit_compile
        self.verbose = verbose
        self._labellers: dict[tuple[int, Refinement], RefinedLabels] = {}

    def ground_truth(self, student: Trainer) -> None:
        """`student` trains on the ground truth next (a chain's generation 1)."""
        self.labels.reset()
        student.use_teacher(None)

    def hand_on(self, model: keras.Model, student: Trainer, refinement: Refinement) -> None:
        """`student` trains on `model`'s refined labels next."""
        if student.teacher is not None:
            student.use_teacher(model, refinement)
        else:
            student.use_teacher(None)
            with self._progress() as progress:
                self.labels.refine(self.labeller(model, refinement), progress)

    def labels_in_use(self, student: Trainer) -> np.ndarray:
        """What `student` trains on as things stand, `[num_ids, classes]`: the table, or,
        online, its teacher's labels of the un-augmented images (training itself labels
        augmented ones)."""
        if student.teaching is None:
            return self.labels.values()
        with self._progress() as progress:
            return self.labels.labelled(self.labeller(student.teacher, student.teaching), progress)

    def _progress(self) -> Progress:
        return Progress("relabelling the training images", self.labels.size, self.verbose)

    def labeller(self, model: keras.Model, refinement: Refinement) -> RefinedLabels:
        """The compiled labelling pass of `model` at `refinement`, made once."""
        key = (id(model), refinement)
        if key not in self._labellers:
            self._labellers[key] = RefinedLabels(
                model, refinement.temperature, refinement.alpha, self.jit_compile
            )
        return self._labellers[key]
