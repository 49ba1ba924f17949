"""TensorBoard logs of a run, laid out to read right at TensorBoard's default settings.

Time Series, where TensorBoard opens, sorts its cards by tag, groups them by the tag's
first part and expands the first two groups; smoothing (0.6) and "ignore outliers" are
on. So:

- `epoch/<metric>` (the first group): the per-epoch curves, as `keras.callbacks.TensorBoard`
  lays them out: sub-runs `gen_<k>/train` and `gen_<k>/validation` (and `control/...`),
  step = epoch, so training and validation overlay on one card per metric
  (`EpochSummaries`). Smoothed like any Keras run's: at the default 15 epochs the last
  point moves by under half a point of accuracy (docs/tensorboard.md).
- `generation/*` (the second group): the `results.json` figures by generation, in the
  `generations` sub-run (GENERATIONS_RUN), as the accuracy chart (an image, each point
  labelled) and a text table. Not as scalars: a line of 2-3 points is what the default
  smoothing bends and "ignore outliers" cuts off.
- `labels/*`: the labels each generation trains on, in the same sub-run, at step =
  that generation (step 1 is the one-hot ground truth, step k+1 the labels generation k
  made): charts, a text table, histograms and the examples moved furthest.

A search (`tuning.py`) writes one HParams session per keras-tuner trial
(`write_trial_hparams`), each with the domains `hparams_config` declares.

Everything goes through `SummaryWriter`, which writes what `tf.summary` would without
TensorFlow, so a run on JAX with TensorFlow absent still has its logs.
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.histogram import summary_v2 as histogram_summary
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from krefinery.analysis.diagnostics import (
    EPSILON,
    LabelStats,
    label_stats,
    moved_furthest,
    top_classes,
)
from krefinery.config import Architecture
from krefinery.outputs import charts

GENERATIONS_RUN = "generations"
GENERATION_TABLE = "generation/table"
ACCURACY_IMAGE = "generation/accuracy_chart"
# The tail the means hide: the share of training examples whose labels put less than
# each of these probabilities on the ground-truth class.
TRUTH_THRESHOLDS = (0.5, 0.1, 0.01)
CONFIDENCE_HISTOGRAM = "labels/confidence"
TRUTH_HISTOGRAM = "labels/ground_truth_probability"
LOG_TRUTH_HISTOGRAM = "labels/log10_ground_truth_probability"
MOVED_IMAGE = "labels/moved_furthest"  # One tag (card) per generation: MOVED_IMAGE/gen_<k>.
MOVED_TABLE = "labels/moved_furthest_table"
LABEL_TABLE = "labels/table"
# The label figures drawn as charts, each point labelled: exact at any smoothing.
LABEL_CHARTS = {
    "agreement": "labels/chart/agreement_and_confidence",
    "tail": "labels/chart/share_truth_probability_below",
    "spread": "labels/chart/entropy_and_kl",
    "changed": "labels/chart/argmax_changed",
}

_ON_LABELS = (
    " Over the training examples, un-augmented. Step = the generation that trains on these "
    "labels (1: the one-hot ground truth; k+1: the labels generation k made, after "
    "temperature and alpha)."
)

# The label figures of `label_stats`, in LABEL_TABLE's columns: (field, heading, format).
LABEL_COLUMNS = (
    ("agreement", "agreement with ground truth", ".4f"),
    ("mean_confidence", "mean confidence", ".4f"),
    ("mean_entropy", "mean entropy (nats)", ".4f"),
    ("kl_from_previous", "KL from previous (nats)", ".4f"),
    ("argmax_changed", "argmax changed", "d"),
)

DESCRIPTIONS = {
    GENERATION_TABLE: "results.json's figures, one row per generation so far (the best on "
    "validation accuracy marked) and, with --control, the control's row: train accuracy is "
    "on the last epoch's augmented images, train fit on the un-augmented ones in inference "
    "mode; labels handed on wrong is the share of the refined labels whose argmax is not "
    "the ground truth (none for the last generation). Step = the last generation in the table.",
    ACCURACY_IMAGE: "Validation and test accuracy by generation, each point labelled with "
    "its value (the run's accuracy.png). Step = the last generation drawn.",
    LABEL_TABLE: "The labels each generation trains on, one row per generation so far: the "
    "share of training examples whose label's most probable class is the ground truth; the "
    "mean top-1 probability; the mean entropy, in nats (0: one-hot; log(classes): uniform); "
    "the mean KL(previous labels || these labels), in nats: how far the relabel moved them; "
    "the examples whose most probable class changed (a count); and the share whose label "
    "puts less than 0.5, 0.1 and 0.01 on the ground truth: the tail the means hide."
    + _ON_LABELS,
    CONFIDENCE_HISTOGRAM: "Histogram of each training example's top-1 label probability."
    + _ON_LABELS,
    TRUTH_HISTOGRAM: "Histogram of the probability each training label puts on its "
    "ground-truth class." + _ON_LABELS,
    LOG_TRUTH_HISTOGRAM: "Histogram of log10 of the probability each training label puts on "
    f"its ground-truth class (-1: 0.1, -2: 0.01; floored at log10({EPSILON:g})), which "
    "spreads out the low-probability tail that the linear histogram puts in one bin."
    + _ON_LABELS,
    MOVED_TABLE: "The examples of the image cards, with their ids: ground truth, its "
    "probability and the top-3 classes of the labels." + _ON_LABELS,
}
for _tag in LABEL_CHARTS.values():
    DESCRIPTIONS[_tag] = (
        "A chart of the figures of labels/table it names, each point labelled with its "
        "value, so it reads right at any smoothing. Step = the last generation drawn; the x "
        "axis is the generation that trains on the labels."
    )


def moved_image_tag(step: int) -> str:
    """One image card per generation, so each is shown at its own size."""
    return f"{MOVED_IMAGE}/gen_{step}"


def moved_image_description(step: int) -> str:
    made = "the one-hot ground truth" if step == 1 else f"the labels generation {step - 1} made"
    return (
        f"The training images whose labels for generation {step} ({made}) put the least "
        "probability on their ground-truth class (the paper's Figure 4 view), furthest "
        "first, row by row, upscaled without blurring; under each: its ground-truth class "
        "and the labels' most probable class, with their probabilities (labels/"
        f"moved_furthest_table has ids and top-3). Step = {step}, the generation that "
        "trains on these labels."
    )


_EPOCH_METRICS = {
    "loss": "Loss, in nats: training, the soft-target cross-entropy against the labels "
    "this generation trains on plus the weight-decay penalty; validation, the "
    "cross-entropy against the ground truth.",
    "accuracy": "Share of images (0 to 1) whose most probable class is the ground truth "
    "(training: augmented images).",
    "label_agreement": "Share of training targets (0 to 1) whose most probable class is "
    "the ground-truth class.",
    "label_entropy": "Mean entropy of the training targets, in nats.",
    "learning_rate": "The learning-rate schedule's value at the epoch's end.",
}


EPOCH_GROUP = "epoch"
TRAIN, VALIDATION = "train", "validation"


def epoch_tag(name: str) -> tuple[str, str]:
    """Keras's log name as (sub-run, tag): `val_<metric>` as (`validation`,
    `epoch/<metric>`), any other as (`train`, `epoch/<name>`)."""
    if name.startswith("val_"):
        return VALIDATION, f"{EPOCH_GROUP}/{name[4:]}"
    return TRAIN, f"{EPOCH_GROUP}/{name}"


def epoch_description(name: str) -> str:
    """One text for both splits of a metric, since they share a card."""
    metric = name[4:] if name.startswith("val_") else name
    what = _EPOCH_METRICS.get(metric, f"Keras's `{metric}`.")
    return (
        f"{what} Step = epoch of the generation (1 to --epochs); sub-runs gen_<k>/train and "
        "gen_<k>/validation."
    )


_file_ids = itertools.count()


class SummaryWriter:
    """One TensorBoard sub-run's events file, holding what `tf.summary` writes (the same
    tags, steps, tensors and plugin metadata), built from TensorBoard's own protos and
    plugin helpers.

    TensorBoard's `EventFileWriter` opens its file through `tf.io.gfile`, which imports
    TensorFlow wherever it is installed; this writes the same records (TensorBoard's
    `RecordWriter`) to a plain file, synchronously, so `flush` puts them on disk.
    """

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        # tf.summary's name: unique per writer, sorted by creation time.
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_ids)}.v2"
        self._records = RecordWriter(open(self.logdir / name, "wb"))
        # Version 2: TensorBoard keeps points whose step goes back (the study's do).
        self._add(
            event_pb2.Event(
                wall_time=now,
                file_version="brain.Event:2",
                source_metadata=event_pb2.SourceMetadata(writer=__name__),
            )
        )
        self.flush()

    def raw(self, summary: summary_pb2.Summary, step: int) -> None:
        """`summary` as it is, at `step` (`tf.summary.experimental.write_raw_pb`)."""
        self._add(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def scalar(self, tag: str, value: float, step: int, description: str | None = None) -> None:
        """A rank-0 float32, as `tf.summary.scalar`."""
        self.raw(scalar_summary.scalar_pb(tag, value, description), step)

    def text(self, tag: str, text: str, step: int, description: str | None = None) -> None:
        """A rank-0 string, as `tf.summary.text`."""
        self.raw(text_summary.text_pb(tag, text, description), step)

    def histogram(self, tag: str, data: np.ndarray, step: int, description: str | None = None) -> None:
        """`[30, 3]` float64 buckets (left edge, right edge, count), as `tf.summary.histogram`
        (TensorBoard's NumPy twin of its bucketing)."""
        self.raw(histogram_summary.histogram_pb(tag, data, description=description), step)

    def image_png(self, tag: str, png: bytes, step: int, description: str | None = None) -> None:
        """One PNG image, as `tf.summary.image` writes it: `[width, height, png]` strings.

        In RGB, as `tf.summary.image` of the PNG decoded to 3 channels (an alpha channel,
        as matplotlib's PNGs have, is dropped)."""
        image = Image.open(io.BytesIO(png))
        if image.mode != "RGB":
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            png = buffer.getvalue()
        width, height = image.size
        summary = summary_pb2.Summary()
        summary.value.add(
            tag=tag,
            metadata=image_metadata.create_summary_metadata(display_name=None, description=description),
            tensor=tensor_util.make_tensor_proto([str(width).encode(), str(height).encode(), png], dtype=np.object_),
        )
        self.raw(summary, step)

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        if not self._records.closed:
            self._records.close()

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _add(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())


class EpochSummaries(keras.callbacks.Callback):
    """Per-epoch curves of one generation as `keras.callbacks.TensorBoard` lays them out:
    the sub-runs `<logdir>/train` and `<logdir>/validation`, the tags `epoch/<metric>`
    (with `epoch/learning_rate`, the schedule's rate at the epoch's end) at step = epoch,
    from 1. Training and validation of a metric share a tag, so they share a card.

    Keras's own callback would do, but writes through `tf.summary` (this runs without
    TensorFlow) and names its tags `epoch_<metric>`: each its own Time Series group, of
    which TensorBoard expands only the first two.
    """

    def __init__(self, logdir: str | os.PathLike):
        super().__init__()
        self.logdir = Path(logdir)
        self._writers: dict[str, SummaryWriter] = {}

    def on_train_begin(self, logs=None):
        self._writers = {split: SummaryWriter(self.logdir / split) for split in (TRAIN, VALIDATION)}

    def on_epoch_end(self, epoch, logs=None):
        values = {name: float(value) for name, value in (logs or {}).items()}
        values.setdefault(
            "learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        )
        _write_epoch(self._writers, epoch + 1, values)

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def write_epoch_curves(logdir: str | os.PathLike, history: Sequence[Mapping[str, float]]) -> None:
    """A stored generation's curves (its record's `history`, one entry per epoch) as
    `EpochSummaries` writes them while it trains."""
    writers = {split: SummaryWriter(Path(logdir) / split) for split in (TRAIN, VALIDATION)}
    try:
        for epoch, values in enumerate(history, start=1):
            _write_epoch(writers, epoch, values)
    finally:
        for writer in writers.values():
            writer.close()


def _write_epoch(writers: Mapping[str, SummaryWriter], epoch: int, values: Mapping[str, float]) -> None:
    for name in sorted(values):
        split, tag = epoch_tag(name)
        writers[split].scalar(tag, values[name], epoch, description=epoch_description(name))
    for writer in writers.values():
        writer.flush()


def _hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    """An HParams plugin record, as `hparams.summary` builds them (without TensorFlow)."""
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=tag,
        metadata=hparams_metadata.create_summary_metadata(data),
        tensor=hparams_metadata.NULL_TENSOR,
    )
    return summary


class GenerationSummaries:
    """The `results.json` figures by generation, in one sub-run: a text table and the
    accuracy chart, rewritten whole at each generation's step (and the control's row once
    it is known)."""

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self._writer: SummaryWriter | None = None
        self._generations: list[Mapping[str, Any]] = []
        self._control: Mapping[str, Any] | None = None

    def write(self, generation: Mapping[str, Any]) -> None:
        """`generation` is a `results.json` generation entry."""
        self._generations.append(generation)
        self._write()

    def write_control(self, control: Mapping[str, Any]) -> None:
        """`control` is `results.json`'s control entry: its row joins the table."""
        self._control = control
        self._write()

    def _write(self) -> None:
        if self._writer is None:
            self._writer = SummaryWriter(self.logdir)
        step = int(self._generations[-1]["generation"])
        best = max(self._generations, key=lambda g: g["val_accuracy"])["generation"]
        png = charts.accuracy_chart_png(self._generations, best)
        self._writer.text(GENERATION_TABLE, self._table(best), step, description=DESCRIPTIONS[GENERATION_TABLE])
        self._writer.image_png(ACCURACY_IMAGE, png, step, description=DESCRIPTIONS[ACCURACY_IMAGE])
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _table(self, best: int) -> str:
        columns = (
            ("val_accuracy", "validation accuracy"),
            ("test_accuracy", "test accuracy"),
            ("train_accuracy", "train accuracy"),
            ("train_label_agreement", "label agreement"),
            ("train_label_entropy", "label entropy (nats)"),
            ("train_accuracy_unaugmented", "train fit (un-augmented)"),
            ("refined_label_disagreement", "labels handed on wrong"),
        )
        lines = [
            "| generation | " + " | ".join(title for _, title in columns) + " | architecture |",
            "|---" * (len(columns) + 2) + "|",
        ]
        rows = [
            (f"{g['generation']}" + (" (best)" if g["generation"] == best else ""), g)
            for g in self._generations
        ]
        control = self._control
        if control is not None and not control.get("diverged"):
            rows.append((f"control (generation {control['mirrors_generation']} on the ground truth)", control))
        for name, g in rows:
            cells = [f"{g[key]:.4f}" if g.get(key) is not None else "-" for key, _ in columns]
            model = Architecture(**g["architecture"]).describe() if "architecture" in g else ""
            lines.append(f"| {name} | " + " | ".join([*cells, model]) + " |")
        return "\n".join(lines)


class RelabelSummaries:
    """An `on_relabel` observer (the chain's or `LabelRefinery`'s): diagnostics of each
    relabel, to TensorBoard.

    `truth()` gives the training examples' ids and ground truth, `images(ids)` their
    un-augmented images (`data.feed.Feed` has both). `history` keeps each step's
    `LabelStats`, for callers that want the figures too.
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        truth: Callable[[], tuple[np.ndarray, np.ndarray]],
        images: Callable[[np.ndarray], np.ndarray],
        class_names: Sequence[str],
        num_images: int = 8,
    ):
        self.logdir = Path(logdir)
        self.truth = truth
        self.images = images
        self.class_names = list(class_names)
        self.num_images = num_images
        self.history: dict[int, LabelStats] = {}
        self._writer: SummaryWriter | None = None
        self._ids: np.ndarray | None = None
        self._truth: np.ndarray | None = None

    def __call__(self, generation: int, previous: np.ndarray, refined: np.ndarray) -> None:
        """Generation `generation` turned `previous` (its own targets) into `refined`.

        Both are `[num_ids, num_classes]` tables indexed by example id.
        """
        if self._writer is None:
            self._writer = SummaryWriter(self.logdir)
            self._ids, self._truth = self.truth()
        previous, refined = previous[self._ids], refined[self._ids]
        if generation == 1:
            self._write_stats(1, label_stats(previous, self._truth))
        stats = label_stats(refined, self._truth, previous)
        self._write_stats(generation + 1, stats)
        self._write_table(generation + 1)
        self._write_charts(generation + 1)
        self._write_moved(generation + 1, refined)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _write_stats(self, step: int, stats: LabelStats) -> None:
        self.history[step] = stats
        truth = stats.ground_truth_probability
        for tag, data in (
            (CONFIDENCE_HISTOGRAM, stats.confidence),
            (TRUTH_HISTOGRAM, truth),
            (LOG_TRUTH_HISTOGRAM, np.log10(np.maximum(truth, EPSILON))),
        ):
            self._writer.histogram(tag, data, step, description=DESCRIPTIONS[tag])

    def _write_table(self, step: int) -> None:
        """Every step's figures so far, exact (LABEL_TABLE)."""
        below = [f"p(truth) < {t:g}" for t in TRUTH_THRESHOLDS]
        lines = [
            "| generation | " + " | ".join([*(title for _, title, _ in LABEL_COLUMNS), *below]) + " |",
            "|---" * (1 + len(LABEL_COLUMNS) + len(below)) + "|",
        ]
        for k in sorted(self.history):
            stats = self.history[k]
            cells = [
                "-" if getattr(stats, field) is None else format(getattr(stats, field), spec)
                for field, _, spec in LABEL_COLUMNS
            ]
            shares = [_share(_truth_below(stats, t)) for t in TRUTH_THRESHOLDS]
            lines.append(f"| {k} | " + " | ".join([*cells, *shares]) + " |")
        self._writer.text(LABEL_TABLE, "\n".join(lines), step, description=DESCRIPTIONS[LABEL_TABLE])

    def _write_charts(self, step: int) -> None:
        steps = sorted(self.history)
        stats = [self.history[k] for k in steps]
        charts_by_tag = {
            LABEL_CHARTS["agreement"]: (
                "Agreement with ground truth, mean confidence",
                {"agreement": [s.agreement for s in stats],
                 "mean confidence": [s.mean_confidence for s in stats]},
            ),
            LABEL_CHARTS["tail"]: (
                "Share of examples whose p(ground truth) is below",
                {f"{t:g}": [_truth_below(s, t) for s in stats]
                 for t in TRUTH_THRESHOLDS},
            ),
            LABEL_CHARTS["spread"]: (
                "Mean entropy, KL from the previous labels (nats)",
                {"entropy": [s.mean_entropy for s in stats],
                 "KL from previous": [s.kl_from_previous for s in stats]},
            ),
            LABEL_CHARTS["changed"]: (
                "Examples whose argmax changed (count)",
                {"changed": [s.argmax_changed for s in stats]},
            ),
        }
        for tag, (title, series) in charts_by_tag.items():
            png = charts.series_chart_png(steps, title, series, "generation that trains on the labels")
            self._writer.image_png(tag, png, step, description=DESCRIPTIONS[tag])

    def _write_moved(self, step: int, refined: np.ndarray) -> None:
        rows = moved_furthest(refined, self._truth, self.num_images)
        images = self.images(self._ids[rows])
        captions = []
        table = ["| rank | id | ground truth | p(truth) | top-3 refined |", "|---|---|---|---|---|"]
        for rank, row in enumerate(rows, start=1):
            truth = self.class_names[self._truth[row]]
            truth_p = refined[row, self._truth[row]]
            top = top_classes(refined[row], 3)
            listed = ", ".join(f"{self.class_names[c]} {p:.2f}" for c, p in top)
            first, first_p = top[0]
            captions.append(
                f"truth {truth}: {_probability(truth_p)}\n"
                f"top {self.class_names[first]}: {_probability(first_p)}"
            )
            table.append(f"| {rank} | {self._ids[row]} | {truth} | {_probability(truth_p)} | {listed} |")
        png = charts.labelled_tiles(images, captions)
        self._writer.image_png(moved_image_tag(step), png, step, description=moved_image_description(step))
        self._writer.text(MOVED_TABLE, "\n".join(table), step, description=DESCRIPTIONS[MOVED_TABLE])


def _truth_below(stats: LabelStats, threshold: float) -> float:
    """The share of training examples whose label puts less than `threshold` on the truth."""
    return float(np.mean(stats.ground_truth_probability < threshold))


def _share(share: float) -> str:
    """Four decimals, or two significant digits below 1e-4 (0.0000 would hide a few examples)."""
    return f"{share:.4f}" if share == 0 or share >= 1e-4 else f"{share:.1e}"


def _probability(p: float) -> str:
    """Three decimals, or two significant digits for the tail (0.000 would hide it)."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


# keras-tuner's trial statuses, as the HParams dashboard's (which has only these four).
_TRIAL_STATUS = {
    "COMPLETED": "STATUS_SUCCESS",
    "FAILED": "STATUS_FAILURE",
    "INVALID": "STATUS_FAILURE",
    "STOPPED": "STATUS_UNKNOWN",  # Stopped early by the oracle: neither done nor failed.
    "RUNNING": "STATUS_RUNNING",
    "IDLE": "STATUS_UNKNOWN",
}

# The metrics of every trial's HParams session: the same for every trial, whatever its
# chain's length (the dashboard's parallel coordinates leave out a trial missing one).
TRIAL_METRICS = {
    "val_accuracy": "Validation accuracy of the trial's chosen generation (the best of "
    "its generations): the search's objective.",
    "val_accuracy_gen_1": "Validation accuracy of generation 1, the refinery every trial "
    "shares: the baseline the chosen generation is measured against.",
    "val_accuracy_last_generation": "Validation accuracy of the last generation of the "
    "trial's chain that did not diverge.",
    "chosen_generation": "The generation of the trial's chain with the best validation accuracy.",
    "epochs_trained": "Epochs this trial trained itself; the rest of its chain came from the store.",
}


def trial_metric_tag(name: str) -> str:
    """`trial/<name>`: a Time Series group that sorts after `epoch`, so a search's
    landing page opens on the trials' curves, then these (one point per trial)."""
    return f"trial/{name}"


def _trial_metric_description(name: str) -> str:
    return TRIAL_METRICS[name] + " One value per keras-tuner trial; Step = 0."


_FIXED_HPARAMS = {
    "refinery_arch": "Network of generation 1, the refinery (the students': --arch).",
    "refinery_model": "The trained model read as generation 1, the refinery (--refinery_model).",
    "refinery_depth": "Depth of generation 1, the refinery (the students': --depth).",
    "refinery_width": "Width of generation 1, the refinery (the students': --width).",
    "refinery_version": "ResNet version of generation 1, the refinery (the students': "
    "--resnet_version).",
}


def hparams_config(
    generations: tuple[int, int],
    temperatures: Sequence[float],
    alphas: Sequence[float],
    fixed: Mapping[str, int | str] | None = None,
) -> summary_pb2.Summary:
    """The search's HParams domains (integer generations, discrete T and alpha) and
    metrics, so the dashboard shows and filters them as what they are. `fixed`: settings
    every trial shares (the refinery's architecture), each a domain of one value.

    Written into each trial's session (`write_trial_hparams`), not a run of its own: the
    dashboard takes it from whichever run holds it, and a run holding only it is listed
    as an empty run."""
    low, high = generations
    hparams = [
        hp.HParam("generations", hp.IntInterval(int(low), int(high)),
                  description="Generations in the trial's chain."),
        hp.HParam("temperature", hp.Discrete(sorted(float(t) for t in temperatures)),
                  description="Softmax temperature of the refined labels."),
        hp.HParam("alpha", hp.Discrete(sorted(float(a) for a in alphas)),
                  description="Share of ground truth mixed into the refined labels."),
        *(hp.HParam(name, hp.Discrete([value if isinstance(value, str) else int(value)]),
                   description=_FIXED_HPARAMS[name])
          for name, value in (fixed or {}).items()),
    ]
    metrics = [
        hp.Metric(trial_metric_tag(name), description=_trial_metric_description(name)) for name in TRIAL_METRICS
    ]
    return hp.hparams_config_pb(hparams=hparams, metrics=metrics)


def trial_metrics(
    chosen: Mapping[str, Any], records: Sequence[Mapping[str, Any]], epochs_trained: int
) -> dict[str, float]:
    """TRIAL_METRICS of a trial whose chain's generations that did not diverge are
    `records` (in order), `chosen` the one the search scores it by."""
    return {
        "val_accuracy": chosen["val_accuracy"],
        "val_accuracy_gen_1": records[0]["val_accuracy"],
        "val_accuracy_last_generation": records[-1]["val_accuracy"],
        "chosen_generation": chosen["generation"],
        "epochs_trained": epochs_trained,
    }


def write_trial_hparams(
    logdir: str | os.PathLike,
    trial_id: str,
    hparams: Mapping[str, Any],
    metrics: Mapping[str, float],
    status: str,
    config: summary_pb2.Summary | None = None,
) -> None:
    """One HParams session for a keras-tuner trial, in `logdir`: its hyperparameters under
    keras-tuner's `trial_id` (so a row matches `tuning.json`), `metrics` (TRIAL_METRICS)
    as scalars `trial/<name>` at step 0 (one value per trial), `status` (keras-tuner's: COMPLETED,
    FAILED, ...) and the search's `hparams_config`. The trial's curves are sub-runs of
    `logdir` (`EpochSummaries`), so filtering runs by the trial finds them."""
    if status.upper() not in _TRIAL_STATUS:
        raise ValueError(f"unknown trial status {status!r}; expected one of {sorted(_TRIAL_STATUS)}")
    with SummaryWriter(logdir) as writer:
        if config is not None:
            writer.raw(config, step=0)
        writer.raw(hp.hparams_pb(dict(hparams), trial_id=str(trial_id)), step=0)
        for name, value in metrics.items():
            writer.scalar(trial_metric_tag(name), value, 0, description=_trial_metric_description(name))
        end = plugin_data_pb2.SessionEndInfo(
            status=api_pb2.Status.Value(_TRIAL_STATUS[status.upper()]), end_time_secs=time.time()
        )
        writer.raw(
            _hparams_summary(
                hparams_metadata.SESSION_END_INFO_TAG,
                plugin_data_pb2.HParamsPluginData(session_end_info=end),
            ),
            step=0,
        )
