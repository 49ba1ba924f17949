"""TensorBoard logs of a run, read back with TensorBoard's own event reader and HTTP server."""

import math
import re
import shutil
import subprocess
import urllib.parse

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import get_json, tensorboard_server
from tensorboard.backend.event_processing import event_accumulator

from krefinery.analysis.diagnostics import label_stats
from krefinery.core.resnet import build_resnet
from krefinery.data.pipeline import eval_dataset, make_splits
from krefinery.data.sources import load_source
from krefinery.outputs import charts, study_report, summaries


def read_run(path) -> dict[str, dict[int, np.ndarray]]:
    """`{tag: {step: value}}` of one sub-run; tf.summary stores everything as tensors."""
    accumulator = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return {
        tag: {event.step: tf.make_ndarray(event.tensor_proto) for event in accumulator.Tensors(tag)}
        for tag in accumulator.Tags()["tensors"]
    }


def described_tags(path) -> dict[str, str]:
    """`{tag: description}` of one sub-run's summaries (what TensorBoard shows under the card's i)."""
    accumulator = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return {
        tag: accumulator.SummaryMetadata(tag).summary_description
        for tag in accumulator.Tags()["tensors"]
        if accumulator.SummaryMetadata(tag).plugin_data.plugin_name != "custom_scalars"
    }


def sub_runs(board) -> list[str]:
    """The sub-runs under `board`: the folders holding event files."""
    return sorted({p.parent.relative_to(board).as_posix() for p in board.rglob("events.out.tfevents.*")})


def scalar_series(board) -> dict[tuple[str, str], int]:
    """`{(sub-run, tag): points}` of every scalar under `board`."""
    found = {}
    for run in sub_runs(board):
        accumulator = event_accumulator.EventAccumulator(str(board / run), size_guidance={event_accumulator.TENSORS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["tensors"]:
            if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":
                found[run, tag] = len(accumulator.Tensors(tag))
    return found


def test_each_generation_has_train_and_validation_curves_as_keras_writes_them(digits_run):
    board = digits_run["workdir"] / "tensorboard"
    assert sub_runs(board) == [
        "gen_1/train", "gen_1/validation", "gen_2/train", "gen_2/validation", "generations",
    ]
    for entry in digits_run["results"]["generations"]:
        train, validation = (read_run(board / f"gen_{entry['generation']}" / split) for split in ("train", "validation"))
        # One tag per metric for both splits, so TensorBoard overlays them on one card.
        assert sorted(train) == [
            "epoch/accuracy", "epoch/label_agreement", "epoch/label_entropy", "epoch/learning_rate", "epoch/loss",
        ]
        assert sorted(validation) == ["epoch/accuracy", "epoch/loss"]
        for tag, values in [*train.items(), *validation.items()]:
            assert sorted(values) == [1, 2], tag  # Step = epoch, counted from 1.
        assert float(validation["epoch/accuracy"][2]) == pytest.approx(entry["val_accuracy"], abs=1e-7)
        # results.json keeps the same curves, epoch by epoch (a search replays them from there).
        assert [h["val_accuracy"] for h in entry["history"]] == pytest.approx([float(validation["epoch/accuracy"][e]) for e in (1, 2)], abs=1e-7)
        assert [h["learning_rate"] for h in entry["history"]] == pytest.approx([float(train["epoch/learning_rate"][e]) for e in (1, 2)], abs=1e-7)
        assert float(train["epoch/accuracy"][2]) == pytest.approx(entry["train_accuracy"], abs=1e-7)
        assert float(train["epoch/label_agreement"][2]) == pytest.approx(entry["train_label_agreement"], abs=1e-7)
        # Cosine decay from 0.1 over two epochs, read at each epoch's end; every generation restarts it.
        assert float(train["epoch/learning_rate"][1]) == pytest.approx(0.05, rel=1e-5)
        assert float(train["epoch/learning_rate"][2]) == pytest.approx(0.0, abs=1e-7)


def test_no_scalar_is_a_line_of_a_point_per_generation(digits_run):
    """TensorBoard's default smoothing bends a line of 2-3 points and "ignore outliers" cuts
    it off: the per-generation figures are charts and tables, the only scalars per epoch."""
    series = scalar_series(digits_run["workdir"] / "tensorboard")
    assert series and all(tag.startswith("epoch/") and points == 2 for (_, tag), points in series.items()), series


def test_cross_generation_view_matches_results(digits_run):
    logged = read_run(digits_run["workdir"] / "tensorboard" / "generations")
    generations = digits_run["results"]["generations"]
    # The table and the chart are exact at any smoothing: the last step holds every generation.
    table = logged[summaries.GENERATION_TABLE][2].item().decode().splitlines()
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table[2:]]
    best = digits_run["results"]["best_generation"]
    assert [row[0] for row in rows] == [f"{g['generation']}" + (" (best)" if g["generation"] == best else "") for g in generations]
    for column, key in enumerate(("val_accuracy", "test_accuracy", "train_accuracy", "train_label_agreement"), start=1):
        assert [row[column] for row in rows] == [f"{g[key]:.4f}" for g in generations], key
    width, height, png = logged[summaries.ACCURACY_IMAGE][2]
    assert tf.image.decode_png(png).shape[:2] == (int(height), int(width))
    assert sorted(logged[summaries.ACCURACY_IMAGE]) == [1, 2]


def test_every_summary_says_what_it_is_and_what_its_step_means(digits_run):
    board = digits_run["workdir"] / "tensorboard"
    for run in ("gen_1/train", "gen_1/validation", "generations"):
        descriptions = described_tags(board / run)
        assert descriptions
        for tag, description in descriptions.items():
            assert "Step = " in description, (run, tag, description)
    assert "nats" in described_tags(board / "generations")[summaries.LABEL_TABLE]
    assert "nats" in described_tags(board / "gen_1" / "train")["epoch/loss"]


def test_relabel_diagnostics_describe_the_labels_generation_two_trained_on(digits_run):
    results = digits_run["results"]
    logged = read_run(digits_run["workdir"] / "tensorboard" / "generations")
    # Recompute generation 1's refined labels (T = 1, alpha = 0) from its saved weights.
    splits = make_splits(load_source("digits"), val_fraction=0.1, seed=0)
    classifier = build_resnet(
        splits.image_shape, splits.num_classes, depth=8, precision=results["runtime"]["precision"]
    )
    classifier.load_weights(digits_run["workdir"] / "gen_1.weights.h5")
    ids, truth, refined, images = [], [], [], []
    for batch in eval_dataset(splits.train):
        ids.append(batch["id"].numpy())
        truth.append(batch["label"].numpy())
        images.append(batch["image"].numpy())
        refined.append(keras.ops.softmax(classifier(batch["image"], training=False)).numpy())
    ids, truth, refined = np.concatenate(ids), np.concatenate(truth), np.concatenate(refined)
    images = np.concatenate(images)
    onehot = np.eye(splits.num_classes, dtype=np.float32)[truth]
    expected = label_stats(refined, truth, onehot)

    # The label table at step 2 holds both steps, exact to its 4 decimals.
    table = logged[summaries.LABEL_TABLE][2].item().decode().splitlines()
    header = [cell.strip() for cell in table[0].split("|")[1:-1]]
    rows = {
        int(cells[0]): dict(zip(header[1:], cells[1:]))
        for cells in ([cell.strip() for cell in line.split("|")[1:-1]] for line in table[2:])
    }
    assert sorted(rows) == [1, 2]
    below = [f"p(truth) < {t:g}" for t in summaries.TRUTH_THRESHOLDS]
    # Step 1: the ground truth generation 1 trained on.
    assert [rows[1][c] for c in ("agreement with ground truth", "mean confidence", "mean entropy (nats)")] == ["1.0000", "1.0000", "0.0000"]
    assert [rows[1][c] for c in ("KL from previous (nats)", "argmax changed", *below)] == ["-", "-", "0.0000", "0.0000", "0.0000"]
    # Step 2: generation 1's labels, which generation 2 trained on.
    second = rows[2]
    assert float(second["agreement with ground truth"]) == pytest.approx(expected.agreement, abs=5e-5)
    assert float(second["mean entropy (nats)"]) == pytest.approx(expected.mean_entropy, rel=1e-4, abs=5e-5)
    assert float(second["mean confidence"]) == pytest.approx(expected.mean_confidence, rel=1e-4, abs=5e-5)
    # -log p of small probabilities magnifies bfloat16 rounding, which differs between the
    # run's compiled relabel pass and this eager recomputation (2^-8 relative per value).
    kl_tolerance = 1e-4 if results["runtime"]["precision"] == "float32" else 4e-3
    assert float(second["KL from previous (nats)"]) == pytest.approx(expected.kl_from_previous, rel=kl_tolerance, abs=5e-5)
    assert int(second["argmax changed"]) == expected.argmax_changed == np.sum(refined.argmax(-1) != truth)
    generation_2 = results["generations"][1]
    assert second["agreement with ground truth"] == f"{generation_2['train_label_agreement']:.4f}"
    assert float(second["mean entropy (nats)"]) == pytest.approx(generation_2["train_label_entropy"], rel=1e-4, abs=5e-5)
    assert 0.0 < expected.agreement < 1.0 and expected.mean_entropy > 0.0
    # The tail: the share below each threshold, to within a few examples that rounding may
    # carry across a threshold.
    for threshold, column in zip(summaries.TRUTH_THRESHOLDS, below):
        share = np.mean(expected.ground_truth_probability < threshold)
        assert float(second[column]) == pytest.approx(share, abs=3 / len(ids))
    assert float(second[below[0]]) > 0.0

    # Histograms count every training example once; the log one spreads out the tail.
    for tag in (summaries.CONFIDENCE_HISTOGRAM, summaries.TRUTH_HISTOGRAM, summaries.LOG_TRUTH_HISTOGRAM):
        assert sorted(logged[tag]) == [1, 2]
        assert logged[tag][2][:, 2].sum() == len(ids) == splits.num_train
    log_buckets = logged[summaries.LOG_TRUTH_HISTOGRAM][2]
    below = log_buckets[log_buckets[:, 1] <= -1.0, 2].sum()  # Buckets wholly below p = 0.1.
    assert 0 < below <= np.sum(expected.ground_truth_probability < 0.1) + 3

    # One image card per generation: the examples furthest from their ground truth,
    # each tile the image itself, upscaled without blurring to at least 64 pixels, in a
    # picture about the size of a Time Series card (so shown at its own size).
    assert summaries.moved_image_tag(2) in logged and summaries.moved_image_tag(3) not in logged
    width, height, png = logged[summaries.moved_image_tag(2)][2]
    picture = tf.image.decode_png(png).numpy()
    assert picture.shape[:2] == (int(height), int(width))
    assert picture.shape[1] <= 460 and picture.shape[0] <= 240
    furthest = np.argsort(refined[np.arange(len(truth)), truth], kind="stable")[:8]
    tile = charts.upscale(images[furthest[0]])
    assert tile.shape[0] >= 64 and tile.shape[0] % images.shape[1] == 0
    corner = charts.MARGIN
    np.testing.assert_array_equal(picture[corner : corner + tile.shape[0], corner : corner + tile.shape[1], 0], tile[..., 0])

    table = logged[summaries.MOVED_TABLE][2].item().decode().splitlines()
    rows = [line.split("|")[1:-1] for line in table[2:]]
    assert [int(row[1]) for row in rows] == [int(i) for i in ids[furthest]]
    assert [row[2].strip() for row in rows] == [str(t) for t in truth[furthest]]
    top = refined[furthest[0]].argmax()
    assert rows[0][4].strip().startswith(f"{top} {refined[furthest[0], top]:.2f}")
    for tag in summaries.LABEL_CHARTS.values():
        assert sorted(logged[tag]) == [2]


def test_tensorboard_serves_the_run_as_the_browser_reads_it(digits_run):
    generations = digits_run["results"]["generations"]
    with tensorboard_server(digits_run["workdir"] / "tensorboard") as url:
        runs = get_json(f"{url}/data/runs")
        scalar_tags = get_json(f"{url}/data/plugin/scalars/tags")
        image_tags = get_json(f"{url}/data/plugin/images/tags")
        text_tags = get_json(f"{url}/data/plugin/text/tags")
        query = urllib.parse.urlencode({"run": "gen_2/validation", "tag": "epoch/accuracy"})
        validation = get_json(f"{url}/data/plugin/scalars/scalars?{query}")

    assert sorted(runs) == ["gen_1/train", "gen_1/validation", "gen_2/train", "gen_2/validation", "generations"]
    assert sorted(scalar_tags) == ["gen_1/train", "gen_1/validation", "gen_2/train", "gen_2/validation"]
    assert "epoch/accuracy" in scalar_tags["gen_1/validation"] and "epoch/loss" in scalar_tags["gen_2/train"]
    # Both epochs of generation 2, as results.json's history has them.
    assert [(step, value) for _, step, value in validation] == [
        (epoch, pytest.approx(logs["val_accuracy"], rel=1e-7))
        for epoch, logs in enumerate(generations[1]["history"], start=1)
    ]
    assert {summaries.ACCURACY_IMAGE, summaries.moved_image_tag(2), *summaries.LABEL_CHARTS.values()} == set(image_tags["generations"])
    assert {summaries.GENERATION_TABLE, summaries.LABEL_TABLE, summaries.MOVED_TABLE} == set(text_tags["generations"])


CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def landing_page(url: str, drawn: str) -> str:
    """The page TensorBoard opens on (Time Series), as headless Chromium renders it with
    every setting at its default: its DOM once the scripts have run. 1600 wide, and tall
    enough that the cards of the expanded groups are drawn (off screen, they are not).
    The cards fill in as TensorBoard's own requests return, which a loaded machine slows
    (a fresh-clone CI once dumped the page before the image card's title): a page whose
    text lacks `drawn` is taken again, up to three times, and the last one returned."""
    for _ in range(3):
        dumped = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,3000",
             "--virtual-time-budget=20000", "--dump-dom", f"{url}/"],
            capture_output=True, text=True, timeout=180,
        )
        assert dumped.returncode == 0, dumped.stderr[-2000:]
        if drawn in page_text(dumped.stdout):
            break
    return dumped.stdout


def page_text(page: str) -> str:
    """The page's text, each element's between bars: a card title `a/b` reads `|a|/b|`."""
    return re.sub(r"\s*\|[\s|]*", "|", re.sub(r"<[^>]+>", "|", page))


def data_table(page: str, tag: str) -> dict[str, tuple[float, float, int]]:
    """`{run: (smoothed, value, step)}` of the table under the Time Series card for `tag`."""
    text = page_text(page)
    group, name = tag.split("/", 1)
    card = text.split(f"|{group}|/{name}|", 1)[1].split("|Run|Smoothed|Value|Step|Relative|", 1)[1]
    rows = {}
    for run, smoothed, value, step in re.findall(r"([\w/]+)\|([-\d.e]+)\|([-\d.e]+)\|(\d+)\|[\d.]+ \w+\|", card.split("|epoch|/", 1)[0] + "|"):
        rows[run] = (float(smoothed), float(value), int(step))
    return rows


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
def test_the_landing_page_opens_on_the_epoch_curves_and_the_generation_chart(digits_run):
    """TensorBoard expands the first two tag groups of Time Series: the per-epoch curves,
    training and validation on one card, and the accuracy chart by generation; the
    figures under the cards are the run's."""
    group, name = summaries.ACCURACY_IMAGE.split("/")
    with tensorboard_server(digits_run["workdir"] / "tensorboard") as url:
        page = landing_page(url, drawn=f"|{group}|/{name}|")
    groups = re.findall(r'class="group-title" title="([^"]+)"', page)
    expanded = re.findall(r'class="expand-group-icon"><mat-icon[^>]*svgicon="(expand_less|expand_more)_24px"', page)
    assert groups == ["epoch", "generation", "labels"]
    assert expanded == ["expand_less", "expand_less", "expand_more"]
    assert f"|{group}|/{name}|" in page_text(page)
    accuracy = data_table(page, "epoch/accuracy")
    for entry in digits_run["results"]["generations"]:
        k = entry["generation"]
        assert set(accuracy) >= {f"gen_{k}/train", f"gen_{k}/validation"}, page_text(page)[-6000:]
        _, value, step = accuracy[f"gen_{k}/validation"]
        assert (value, step) == (pytest.approx(entry["val_accuracy"], abs=5e-5), 2)
        _, value, step = accuracy[f"gen_{k}/train"]
        assert (value, step) == (pytest.approx(entry["train_accuracy"], abs=5e-5), 2)
    agreement = data_table(page, "epoch/label_agreement")
    assert agreement["gen_2/train"][1] == pytest.approx(digits_run["results"]["generations"][1]["train_label_agreement"], abs=5e-5)


def test_accuracy_chart_is_written(digits_run):
    png = (digits_run["workdir"] / "accuracy.png").read_bytes()
    image = tf.image.decode_png(png)
    assert image.shape[0] > 300 and image.shape[1] > 400


def test_the_moved_furthest_table_writes_p_truth_as_its_captions_do(tmp_path):
    """A tail probability (here 5.7e-04) reads the same in the table as in the image
    captions, not rounded to three decimals (0.001 here; 0.000 below 5e-04)."""
    truth = np.array([0, 1, 2, 0])
    refined = np.array(
        [[0.00057, 0.99943, 0.0], [0.2, 0.7, 0.1], [0.05, 0.05, 0.9], [0.9, 0.05, 0.05]], np.float32
    )
    writer = summaries.RelabelSummaries(
        tmp_path, lambda: (np.arange(4), truth), lambda ids: np.zeros((len(ids), 8, 8, 1), np.uint8),
        ["a", "b", "c"], num_images=2,
    )
    writer(1, np.eye(3, dtype=np.float32)[truth], refined)
    writer.close()
    table = read_run(tmp_path)[summaries.MOVED_TABLE][2].item().decode().splitlines()
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table[2:]]
    assert [row[1:4] for row in rows] == [["0", "a", "5.7e-04"], ["1", "b", "0.700"]]


def test_label_tiles_are_upscaled_without_blurring():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    picture = tf.image.decode_png(charts.labelled_tiles(small, ["a\nb"] * 5)).numpy()[..., 0]
    tiles = [np.kron(image[..., 0], np.ones((8, 8), np.uint8)) for image in small]  # Each pixel an 8x8 square.

    def found_at(tile):
        return [
            (y, x)
            for y in range(picture.shape[0] - 63)
            for x in range(picture.shape[1] - 63)
            if picture[y, x] == tile[0, 0] and np.array_equal(picture[y : y + 64, x : x + 64], tile)
        ]

    positions = [found_at(tile) for tile in tiles]
    assert positions[0] == [(charts.MARGIN, charts.MARGIN)]
    # Row by row, four to a row: the fifth starts the second row.
    assert all(len(p) == 1 for p in positions)
    assert [y for (y, _), in positions[:4]] == [charts.MARGIN] * 4
    assert positions[4][0][1] == charts.MARGIN and positions[4][0][0] > charts.MARGIN + 64
    assert charts.upscale(np.zeros((32, 32, 3), np.uint8)).shape == (64, 64, 3)
    assert charts.upscale(np.zeros((200, 100, 3), np.uint8)).shape == (200, 100, 3)


def test_every_keras_tuner_trial_status_is_written_as_an_hparams_status(tmp_path):
    import keras_tuner as kt
    from tensorboard.plugins.hparams import api_pb2, metadata

    statuses = {}
    for status in vars(kt.engine.trial.TrialStatus).values():
        if isinstance(status, str) and status.isupper():
            summaries.write_trial_hparams(tmp_path / status, "7", {"generations": 2}, {"val_accuracy": 0.5}, status)
            tags = read_run(tmp_path / status)
            assert float(tags["trial/val_accuracy"][0]) == 0.5
            accumulator = event_accumulator.EventAccumulator(str(tmp_path / status))
            accumulator.Reload()
            content = accumulator.SummaryMetadata(metadata.SESSION_END_INFO_TAG).plugin_data.content
            statuses[status] = metadata.parse_session_end_info_plugin_data(content).status
    assert statuses["COMPLETED"] == api_pb2.STATUS_SUCCESS and statuses["FAILED"] == api_pb2.STATUS_FAILURE
    assert {"RUNNING", "IDLE", "INVALID", "STOPPED"} <= set(statuses)
    with pytest.raises(ValueError, match="unknown trial status"):
        summaries.write_trial_hparams(tmp_path / "x", "7", {}, {}, "DONE")


# One of each kind of summary, written with TensorFlow's imports failing on the JAX backend.
WRITE_WITHOUT_TENSORFLOW = """
import sys
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from krefinery.config import Config
from krefinery.outputs import study_report, summaries

out = Path(sys.argv[1])
with summaries.SummaryWriter(out / "kinds") as writer:
    writer.scalar("scalar", 0.25, 3, description="A scalar.")
    writer.text("text", "| a |\\n|---|\\n| b |", 3, description="A table.")
    writer.histogram("histogram", np.load(out / "data.npy"), 3, description="A histogram.")
    writer.image_png("image", (out / "image.png").read_bytes(), 3, description="An image.")
generations = summaries.GenerationSummaries(out / "generations")
generations.write({"generation": 1, "val_accuracy": 0.5, "test_accuracy": 0.4})
generations.close()
config = summaries.hparams_config((1, 2), [1.0, 4.0], [0.0])
summaries.write_trial_hparams(out / "search" / "0", "0", {"temperature": 4.0}, {"val_accuracy": 0.75}, "COMPLETED", config)
runs = [
    {"generations": [{"generation": k, "val_accuracy": 0.5 + k / 10 + r / 100, "test_accuracy": 0.4 + k / 10}
                     for k in (1, 2)],
     "config": {"seed": r}, "best_generation": 2, "workdir": str(r), "control": None}
    for r in range(2)
]
record = study_report.study_record(Config(generations=2, repeats=2), runs, out)
study_report.write_tensorboard(record, runs, out / "study")
assert keras.backend.backend() == "jax" and "tensorflow" not in sys.modules
"""


def test_summaries_are_written_without_tensorflow_as_tf_summary_writes_them(tmp_path):
    from tensorboard.plugins.hparams import api_pb2, metadata
    from test_arrays import BLOCK_TENSORFLOW, run_python

    rng = np.random.default_rng(0)
    data = rng.normal(size=1000).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    pixels = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)  # RGBA, 5 wide and 3 high.
    (tmp_path / "image.png").write_bytes(tf.io.encode_png(pixels).numpy())
    run_python(BLOCK_TENSORFLOW + WRITE_WITHOUT_TENSORFLOW, str(tmp_path))

    # Each kind as tf.summary writes it: the same tensors and the same plugin metadata.
    with tf.summary.create_file_writer(str(tmp_path / "tf")).as_default(step=3):
        tf.summary.scalar("scalar", 0.25, description="A scalar.")
        tf.summary.text("text", "| a |\n|---|\n| b |", description="A table.")
        tf.summary.histogram("histogram", data, description="A histogram.")
        tf.summary.image("image", tf.image.decode_png(tf.io.encode_png(pixels), channels=3)[None],
                         description="An image.")
    ours, theirs = (event_accumulator.EventAccumulator(str(tmp_path / run)) for run in ("kinds", "tf"))
    ours.Reload(), theirs.Reload()
    assert ours.Tags()["tensors"] == theirs.Tags()["tensors"] == ["scalar", "text", "histogram", "image"]
    for tag in ours.Tags()["tensors"]:
        assert ours.SummaryMetadata(tag) == theirs.SummaryMetadata(tag), tag
        (mine,), (tfs,) = ours.Tensors(tag), theirs.Tensors(tag)
        assert mine.step == tfs.step == 3
        mine, tfs = tf.make_ndarray(mine.tensor_proto), tf.make_ndarray(tfs.tensor_proto)
        assert mine.dtype == tfs.dtype and mine.shape == tfs.shape, tag
        if tag == "image":  # The PNG bytes differ by encoder; the pixels are the same.
            assert list(mine[:2]) == list(tfs[:2]) == [b"5", b"3"]
            np.testing.assert_array_equal(tf.image.decode_png(mine[2]), pixels[..., :3])
        else:
            np.testing.assert_array_equal(mine, tfs)
    assert ours.SummaryMetadata("histogram").summary_description == "A histogram."

    generations = read_run(tmp_path / "generations")
    assert "| 1 (best) | 0.5000 | 0.4000 |" in generations[summaries.GENERATION_TABLE][1].item().decode()
    assert described_tags(tmp_path / "generations")[summaries.ACCURACY_IMAGE] == summaries.DESCRIPTIONS[summaries.ACCURACY_IMAGE]

    study = read_run(tmp_path / "study")
    charts_by_metric = [study_report.chart_tag(metric) for metric in study_report.METRICS]
    assert sorted(study) == sorted([*charts_by_metric, study_report.TABLE_TAG])
    assert study["study/table"][0].item().decode().startswith("```\nStudy: 2 repeat(s)")
    for tag in charts_by_metric:  # study.png's charts, each at the size of a card.
        width, height, png = study[tag][0]
        assert (int(width), int(height)) == (420, 220) == tuple(tf.image.decode_png(png).shape[1::-1])

    # The search's domains travel with each trial's session: no run holds them alone.
    trial = event_accumulator.EventAccumulator(str(tmp_path / "search" / "0"), size_guidance={event_accumulator.TENSORS: 0})
    trial.Reload()
    experiment = metadata.parse_experiment_plugin_data(trial.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content)
    assert [h.name for h in experiment.hparam_infos] == ["generations", "temperature", "alpha"]
    assert [m.name.tag for m in experiment.metric_infos] == [f"trial/{name}" for name in summaries.TRIAL_METRICS]
    start = metadata.parse_session_start_info_plugin_data(trial.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content)
    end = metadata.parse_session_end_info_plugin_data(trial.SummaryMetadata(metadata.SESSION_END_INFO_TAG).plugin_data.content)
    assert (start.group_name, start.hparams["temperature"].number_value) == ("0", 4.0)
    assert end.status == api_pb2.STATUS_SUCCESS
    assert float(tf.make_ndarray(trial.Tensors("trial/val_accuracy")[0].tensor_proto)) == 0.75
    assert trial.SummaryMetadata("trial/val_accuracy").summary_description.startswith("Validation accuracy")


def test_label_stats_on_hand_computed_labels():
    previous = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    refined = np.array([[0.5, 0.5], [0.0, 1.0], [0.2, 0.8]])
    stats = label_stats(refined, np.array([0, 1, 0]), previous)
    assert stats.agreement == pytest.approx(2 / 3)  # argmax of [0.5, 0.5] is class 0.
    assert stats.mean_confidence == pytest.approx((0.5 + 1.0 + 0.8) / 3)
    assert stats.mean_entropy == pytest.approx((math.log(2) + 0 - 0.2 * math.log(0.2) - 0.8 * math.log(0.8)) / 3)
    assert stats.kl_from_previous == pytest.approx((math.log(2) + 0 + math.log(5)) / 3)
    assert stats.argmax_changed == 1
    np.testing.assert_allclose(stats.ground_truth_probability, [0.5, 1.0, 0.2])


def test_online_relabel_reports_the_teachers_labels_of_unaugmented_images():
    from helpers import classifier_builder, every_generation, random_images

    from krefinery.config import Config, Refinement
    from krefinery.core.label_refinery import LabelRefinery
    from krefinery.core.losses import refined_labels
    from krefinery.core.trainer import Trainer, make_optimizer
    from krefinery.data.pipeline import onehot_table, training_dataset

    splits = make_splits(random_images(), val_fraction=0.2, seed=0)
    build = classifier_builder(splits.image_shape, splits.num_classes)
    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes)
    train_ds = training_dataset(splits.train, labels, 16, seed=0)
    trainer = Trainer(build(0), teacher=build(0))
    trainer.compile(make_optimizer(Config(epochs=1, warmup_epochs=0), math.ceil(splits.num_train / 16)))
    seen = []
    refinery = LabelRefinery(
        labels, every_generation(build), Refinement(3, temperature=3.0),
        on_relabel=lambda k, previous, refined: seen.append((k, previous, refined)),
    )
    for _ in range(2):
        trainer.fit(train_ds, epochs=1, callbacks=[refinery], verbose=0)

    def teacher_labels():
        table = labels.values()
        for batch in eval_dataset(splits.train):
            logits = trainer.teacher(batch["image"], training=False)
            table[batch["id"].numpy()] = refined_labels(logits, batch["label"], 3.0, 0.0).numpy()
        return table

    assert [k for k, _, _ in seen] == [1, 2]
    np.testing.assert_array_equal(seen[0][1], labels.values())  # Generation 1 trained on ground truth.
    np.testing.assert_array_equal(seen[1][1], seen[0][2])  # Each relabel starts from the last one's labels.
    np.testing.assert_allclose(seen[1][2], teacher_labels(), atol=1e-6)
    assert not np.allclose(seen[1][2], seen[1][1], atol=1e-3)
