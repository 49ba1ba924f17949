"""TensorBoard summaries beyond Keras's per-epoch curves: across generations, and at each relabel.

Sub-runs under `<workdir>/tensorboard/`:

- `gen_<k>/train`, `gen_<k>/validation`: written by `keras.callbacks.TensorBoard`
  (`epoch_loss`, `epoch_accuracy`, `epoch_learning_rate`, ... at step = epoch).
- `generations/validation`, `generations/test`: `generation_accuracy` at step =
  generation, so the two overlay on one chart.
- `refinery`: the labels each generation trains on, at step = that generation (step 1
  is the one-hot ground truth, step k+1 the labels generation k made). See `LABEL_TAGS`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from krefinery import charts
from krefinery.diagnostics import LabelStats, label_stats, moved_furthest, top_classes

GENERATION_TAG = "generation_accuracy"
LABEL_TAGS = {
    "agreement": "labels/agreement_with_ground_truth",
    "mean_entropy": "labels/mean_entropy",
    "mean_confidence": "labels/mean_confidence",
    "kl_from_previous": "labels/kl_from_previous",
    "argmax_changed": "labels/argmax_changed",
}
CONFIDENCE_HISTOGRAM = "labels/confidence"
TRUTH_HISTOGRAM = "labels/ground_truth_probability"
MOVED_IMAGE = "labels/moved_furthest"
MOVED_TABLE = "labels/moved_furthest_table"


def write_scalars(writer: tf.summary.SummaryWriter, values: Mapping[str, float], step: int) -> None:
    """One scalar per tag at `step`, flushed, so a live TensorBoard shows it at once."""
    with writer.as_default(step=step):
        for tag, value in values.items():
            tf.summary.scalar(tag, value)
    writer.flush()


class GenerationSummaries:
    """Validation and test accuracy of each generation, at step = generation."""

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def write(self, generation: Mapping[str, Any]) -> None:
        """`generation` is a `results.json` generation entry."""
        for run, key in (("validation", "val_accuracy"), ("test", "test_accuracy")):
            if run not in self._writers:
                self._writers[run] = tf.summary.create_file_writer(os.fspath(self.logdir / run))
            step = generation["generation"]
            write_scalars(self._writers[run], {GENERATION_TAG: generation[key]}, step)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


class RelabelSummaries:
    """`LabelRefinery`'s `on_relabel` observer: diagnostics of each relabel, to TensorBoard.

    `examples` are the un-augmented training batches `{"id", "image", "label"}`.
    `history` keeps each step's `LabelStats`, for callers that want the figures too.
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        examples: tf.data.Dataset,
        class_names: Sequence[str],
        num_images: int = 8,
    ):
        self.logdir = Path(logdir)
        self.examples = examples
        self.class_names = list(class_names)
        self.num_images = num_images
        self.history: dict[int, LabelStats] = {}
        self._writer: tf.summary.SummaryWriter | None = None
        self._ids: np.ndarray | None = None
        self._truth: np.ndarray | None = None

    def __call__(self, generation: int, previous: np.ndarray, refined: np.ndarray) -> None:
        """Generation `generation` turned `previous` (its own targets) into `refined`.

        Both are `[num_ids, num_classes]` tables indexed by example id.
        """
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.fspath(self.logdir))
            self._ids, self._truth = self._read_ids()
        previous, refined = previous[self._ids], refined[self._ids]
        if generation == 1:
            self._write_stats(1, label_stats(previous, self._truth))
        stats = label_stats(refined, self._truth, previous)
        self._write_stats(generation + 1, stats)
        self._write_moved(generation + 1, refined)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _read_ids(self) -> tuple[np.ndarray, np.ndarray]:
        ids, truth = [], []
        without_images = self.examples.map(lambda b: {"id": b["id"], "label": b["label"]})
        for batch in without_images.as_numpy_iterator():
            ids.append(batch["id"])
            truth.append(batch["label"])
        return np.concatenate(ids), np.concatenate(truth)

    def _write_stats(self, step: int, stats: LabelStats) -> None:
        self.history[step] = stats
        values = {
            tag: getattr(stats, field)
            for field, tag in LABEL_TAGS.items()
            if getattr(stats, field) is not None
        }
        write_scalars(self._writer, values, step)
        with self._writer.as_default(step=step):
            tf.summary.histogram(CONFIDENCE_HISTOGRAM, stats.confidence)
            tf.summary.histogram(TRUTH_HISTOGRAM, stats.ground_truth_probability)

    def _write_moved(self, step: int, refined: np.ndarray) -> None:
        rows = moved_furthest(refined, self._truth, self.num_images)
        images = self._images(self._ids[rows])
        captions = []
        table = ["| rank | id | ground truth | p(truth) | top-3 refined |", "|---|---|---|---|---|"]
        for rank, row in enumerate(rows, start=1):
            truth = self.class_names[self._truth[row]]
            top = top_classes(refined[row], 3)
            listed = ", ".join(f"{self.class_names[c]} {p:.2f}" for c, p in top)
            lines = [f"truth: {truth}"] + [f"{self.class_names[c]}: {p:.2f}" for c, p in top]
            captions.append("\n".join(lines))
            table.append(
                f"| {rank} | {self._ids[row]} | {truth} | {refined[row, self._truth[row]]:.3f} "
                f"| {listed} |"
            )
        png = charts.captioned_grid(images, captions)
        with self._writer.as_default(step=step):
            tf.summary.image(
                MOVED_IMAGE,
                tf.image.decode_png(png, channels=3)[None],
                description="Training images whose refined labels put the least probability "
                "on their ground-truth class.",
            )
            tf.summary.text(MOVED_TABLE, "\n".join(table))

    def _images(self, ids: np.ndarray) -> np.ndarray:
        """The un-augmented images of `ids`, in that order (one pass over the examples)."""
        wanted = {int(i): n for n, i in enumerate(ids)}
        found: dict[int, np.ndarray] = {}
        for batch in self.examples.as_numpy_iterator():
            for i, image in zip(batch["id"], batch["image"]):
                if int(i) in wanted:
                    found[wanted[int(i)]] = image
            if len(found) == len(wanted):
                break
        return np.stack([found[n] for n in range(len(ids))])
