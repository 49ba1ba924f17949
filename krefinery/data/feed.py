"""What a chain needs of its data, whichever path brings it: tf.data, or batches made on the device.

`Feed` is the one interface the generation loop reads; `pipeline.TFDataFeed` and
`memory.MemoryFeed` implement it. Both number the training examples by their position
in the source (the id), so the label table, the refined labels and the figures mean
the same on either path.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from krefinery.core.refinement import LabelTable


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a run knows and records of its data (`results.json`'s `data`)."""

    num_ids: int  # Examples in the source's training split: ids are 0..num_ids-1.
    num_train: int
    num_val: int
    num_test: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    flip_safe: bool
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)  # From `Source.notes`.

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def record(self) -> dict[str, Any]:
        return {
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_test": self.num_test,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "image_shape": list(self.image_shape),
            **self.notes,
        }


class Feed(Protocol):
    """A chain's data as `fit` and `evaluate` take it.

    Evaluation data (`validation`, `test`, `train_unaugmented`) are un-augmented
    `{"image", "label"}` batches in a fixed order; `training` batches carry `"id"` and
    `"target"` too, the target read from `labels` by id as each batch is made.
    """

    info: DataInfo
    labels: LabelTable
    steps_per_epoch: int
    validation: Any
    test: Any

    def training(self, generation: int, initial_epoch: int) -> Any:
        """Generation `generation`'s batches from epoch `initial_epoch` (0-based) to the
        last, one stream: `fit` reads it with `steps_per_epoch` and `shuffle=False`. Each
        epoch's order and augmentation depend on (seed, generation, epoch) alone."""

    def train_unaugmented(self) -> Any:
        """The training images as evaluation data: how well a model fits them."""

    def truth(self) -> tuple[np.ndarray, np.ndarray]:
        """The training examples' ids and ground-truth labels, in one fixed order."""

    def images(self, ids: np.ndarray) -> np.ndarray:
        """The un-augmented training images of `ids`, in that order."""
