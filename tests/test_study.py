"""Studies: the statistics by hand, repeats and the control for real, the under-fit warning."""

import io
import math
import re

import numpy as np
import pytest
from helpers import read_json, read_weights, refusal, run_cli, trained_generations

from krefinery.analysis import stats
from krefinery.analysis.underfit import FitCheck, label_figures, model_accuracy
from krefinery.config import Config, Refinement

TINY = ("--depth=8", "--epochs=1", "--generations=2", "--batch_size=32", "--warmup_epochs=0", "--verbose=0", "--precision=float32", "--nojit_compile")


# Student's t two-sided 95% critical values, from a printed table.
T_95 = {2: 4.303, 3: 3.182}


def test_mean_sd_and_interval_by_hand():
    # mean 0.92; deviations -0.02, 0, +0.02: sd = sqrt(0.0008 / 2) = 0.02.
    summary = stats.summarize([0.90, 0.92, 0.94])
    assert summary.n == 3
    assert summary.mean == pytest.approx(0.92)
    assert summary.sd == pytest.approx(0.02)
    half = T_95[2] * 0.02 / math.sqrt(3)  # 0.04968
    assert summary.low == pytest.approx(0.92 - half, abs=1e-5)
    assert summary.high == pytest.approx(0.92 + half, abs=1e-5)
    assert stats.t_quantile(0.95, 3) == pytest.approx(T_95[3], abs=1e-3)


def test_paired_differences_and_verdicts_by_hand():
    # Differences 0.01, 0.02, 0.01: mean 0.013333, sd 0.0057735, half-width
    # 4.303 * 0.0057735 / sqrt(3) = 0.014343: the interval [-0.00101, 0.02768] holds 0.
    noise = stats.compare([0.85, 0.87, 0.86], [0.84, 0.85, 0.85])
    assert noise.differences == pytest.approx((0.01, 0.02, 0.01))
    assert noise.difference.mean == pytest.approx(0.0133333, abs=1e-6)
    assert noise.difference.sd == pytest.approx(0.0057735, abs=1e-6)
    assert noise.difference.low == pytest.approx(-0.00101, abs=2e-5)
    assert noise.difference.high == pytest.approx(0.02768, abs=2e-5)
    assert noise.verdict == stats.WITHIN_NOISE
    # Differences 0.02, 0.03, 0.02, 0.03: mean 0.025, sd 0.0057735, half-width
    # 3.182 * 0.0057735 / 2 = 0.009186: [0.01581, 0.03419] excludes 0.
    gain = stats.compare([0.62, 0.63, 0.62, 0.63], [0.60, 0.60, 0.60, 0.60])
    assert gain.difference.low == pytest.approx(0.01581, abs=2e-5)
    assert gain.difference.high == pytest.approx(0.03419, abs=2e-5)
    assert gain.verdict == stats.BETTER
    assert stats.compare([0.60] * 4, [0.62, 0.63, 0.62, 0.63]).verdict == stats.WORSE
    # The same difference in every repeat: a zero-width interval, on 0 or off it.
    assert stats.compare([0.7, 0.8], [0.7, 0.8]).verdict == stats.WITHIN_NOISE
    assert stats.compare([0.71, 0.81], [0.7, 0.8]).verdict == stats.BETTER
    # One repeat: a difference, but no spread, no interval and no verdict.
    one = stats.compare([0.9], [0.8])
    assert one.difference.mean == pytest.approx(0.1)
    assert (one.difference.sd, one.difference.low, one.verdict) == (None, None, stats.NO_VERDICT)
    with pytest.raises(ValueError):
        stats.compare([0.9, 0.8], [0.8])


def test_the_model_behind_refined_labels_is_recovered_through_alpha():
    truth = np.array([0, 1, 2, 0])
    softmax = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.3, 0.35, 0.35]])
    # The model is wrong on examples 1 and 3, but with alpha = 0.3 every label peaks at
    # its truth (example 1: 0.3 + 0.7 * 0.4 = 0.58 > 0.35); the recovered accuracy is the model's.
    refined = 0.3 * np.eye(3)[truth] + 0.7 * softmax
    assert np.mean(refined.argmax(-1) == truth) == 1.0
    assert model_accuracy(refined, truth, 0.3) == pytest.approx(0.5)
    assert model_accuracy(softmax, truth, 0.0) == pytest.approx(0.5)
    assert model_accuracy(np.eye(3)[truth], truth, 1.0) is None


def test_label_figures_by_hand():
    truth = np.array([0, 1, 2, 0])
    softmax = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.3, 0.35, 0.35]])
    # The table holds rows for every id; the figures read the training ids' rows only.
    table = np.concatenate([np.eye(3)[[2, 2]], softmax])
    ids = np.array([2, 3, 4, 5])
    assert label_figures(table, ids, truth, alpha=0.0) == {
        "train_accuracy_unaugmented": pytest.approx(0.5),
        "refined_label_disagreement": pytest.approx(0.5),
    }
    # alpha = 0.3: every label peaks at its truth, but the model behind them is right on half.
    table[2:] = 0.3 * np.eye(3)[truth] + 0.7 * softmax
    assert label_figures(table, ids, truth, alpha=0.3) == {
        "train_accuracy_unaugmented": pytest.approx(0.5),
        "refined_label_disagreement": 0.0,
    }


@pytest.mark.parametrize("disagreement, warned", [(0.42, True), (0.03, True), (0.01, False), (0.0, False), (None, False)])
def test_the_warning_fires_above_the_threshold_only(disagreement, warned):
    stream = io.StringIO()
    check = FitCheck(config=Config(epochs=6), stream=stream)
    fit = None if disagreement is None else 1 - disagreement
    check.check(1, {"train_accuracy_unaugmented": fit, "refined_label_disagreement": disagreement})
    printed = stream.getvalue()
    assert bool(printed) == warned and len(check.warnings) == warned
    if warned:
        assert "generation 2 will learn those mistakes" in printed
        assert "--epochs, now 6" in printed and "--alpha" in printed
        assert f"on {disagreement:.1%} of them" in printed


def test_repeats_share_the_splits_and_differ_in_their_seeds(tmp_path):
    from krefinery.chain.experiment import prepare_experiment
    from krefinery.commands.study import repeat_config

    study = Config(depth=8, seed=5, repeats=2, precision="float32", jit_compile=False)
    a, b = (prepare_experiment(repeat_config(study, r, tmp_path)) for r in range(2))
    assert (a.config.seed, b.config.seed) == (5, 6)
    assert a.config.split_seed == b.config.split_seed == 5
    for split in ("train", "val", "test"):
        ids = [np.sort([int(e["id"]) for e in getattr(x.feed.splits, split)]) for x in (a, b)]
        np.testing.assert_array_equal(*ids)
    first_batches = [next(iter(x.training_batches(1)))["id"].numpy() for x in (a, b)]
    assert not np.array_equal(*first_batches)  # Shuffled by each repeat's own seed.
    assert not np.allclose(a.trainer_for(1).classifier.get_weights()[0], b.trainer_for(1).classifier.get_weights()[0])


def test_a_study_with_a_control(tmp_path, capsys):
    """One repeat with the control: generation 2 of the chain at alpha = 1 (ground-truth
    labels, generation 2's seed and per-epoch stream), on the run's store, sharing its
    generation 1; then the same command again resumes the finished study: nothing trains.
    One epoch at a tiny learning rate under-fits generation 1: its figures and warning."""
    from test_tensorboard import read_run

    from krefinery.chain.store import chain_keys
    from krefinery.core.refinement import generation_seed
    from krefinery.outputs.run_outputs import CONTROL_WEIGHTS

    root, models = tmp_path / "study", tmp_path / "models"
    args = (*TINY, "--learning_rate=0.002", "--repeats=1", "--control", "--seed=3", f"--workdir={root}", f"--export_dir={models}")
    run_cli(*args)
    record = read_json(root / "study.json")
    repeat = root / "repeat_0"
    run = read_json(repeat / "results.json")
    assert record["seeds"] == [3] and run["config"]["seed"] == 3 and run["config"]["split_seed"] == 3
    control, first, second = run["control"], *run["generations"]
    config = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in run["config"].items()})
    keys = chain_keys(config, run["runtime"], Refinement(2, config.temperature, 1.0))
    assert control["key"] == keys[1] and first["key"] == keys[0] != second["key"]
    assert (control["alpha"], control["generation"]) == (1.0, "control")
    assert control["weight_seed"] == generation_seed(3, 2)
    assert control["train_label_agreement"] == 1.0 and control["train_label_entropy"] == 0.0
    assert control["refined_label_disagreement"] is None and 0 < control["train_accuracy_unaugmented"] <= 1
    trained = trained_generations(repeat)
    assert [(t["generation"], t["alpha"]) for t in trained] == [(1, None), (2, 0.0), (2, 1.0)]
    stored = [read_weights(repeat / name) for name in (CONTROL_WEIGHTS, second["weights"], first["weights"])]
    assert sorted(stored[0]) == sorted(stored[1]) and stored[0]
    for other in stored[1:]:  # Its own weights: neither generation 2's nor generation 1's.
        assert any(not np.array_equal(other[k], stored[0][k]) for k in stored[0])
    # One repeat: figures without spread, differences without verdicts.
    assert record["generations"][0]["test_accuracy"]["sd"] is None
    assert {c["verdict"] for c in record["comparisons"]} == {"one repeat: no verdict"}
    twin = next(c for c in record["comparisons"] if c["b"] == "control" and c["metric"] == "test_accuracy")
    assert twin["differences"] == [pytest.approx(second["test_accuracy"] - control["test_accuracy"])]
    # One export: the best generation of all repeats, a copy of that repeat's export.
    assert record["export"] == str(models / "digits" / "1")
    source = repeat / "saved_models" / "digits" / "1" / "saved_model.pb"
    assert (models / "digits" / "1" / "saved_model.pb").read_bytes() == source.read_bytes()
    assert (root / "study.png").read_bytes().startswith(b"\x89PNG")
    board = read_run(root / "tensorboard" / "study")
    # study.png's charts and the report: no scalars.
    assert sorted(board) == ["generation/study_test_accuracy", "generation/study_val_accuracy", "study/table"]
    report = board["study/table"][0].item().decode()
    assert re.search(rf"^ *control +{control['val_accuracy']:.4f} +{control['test_accuracy']:.4f} ", report, re.M), report
    curves = read_run(repeat / "tensorboard" / "control" / "validation")  # The control's epochs.
    assert sorted(curves["epoch/accuracy"]) == [1]
    table = read_run(repeat / "tensorboard" / "generations")["generation/table"]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table[2].item().decode().splitlines()[2:]]
    assert rows[-1][0] == "control (generation 2 on the ground truth)"
    assert rows[-1][2] == f"{control['test_accuracy']:.4f}"
    printed = capsys.readouterr()
    assert "generation 2 vs control (test accuracy): one repeat: no verdict" in printed.out
    # Under-fit: the figures in results.json and TensorBoard, and the warning on stderr.
    assert first["refined_label_disagreement"] > 0.3
    # alpha = 0: the labels' argmax is the model's, so fit and disagreement add to 1.
    assert first["train_accuracy_unaugmented"] == pytest.approx(1 - first["refined_label_disagreement"])
    assert second["refined_label_disagreement"] is None  # The last generation hands nothing on.
    assert 0.0 < second["train_accuracy_unaugmented"] < 0.9
    assert "warning: generation 1 under-fits" in printed.err
    assert "generation 2 will learn those mistakes" in printed.err
    assert [row[6:8] for row in rows[:2]] == [
        [f"{first['train_accuracy_unaugmented']:.4f}", f"{first['refined_label_disagreement']:.4f}"],
        [f"{second['train_accuracy_unaugmented']:.4f}", "-"],
    ]
    # The same command again: the finished study is reprinted, nothing retrains or re-exports.
    run_cli(*args)
    assert read_json(root / "study.json") == record
    assert len(trained_generations(repeat)) == 3
    assert sorted(p.name for p in (models / "digits").iterdir()) == ["1"]
    assert "generation 2 vs control" in capsys.readouterr().out
    # Other settings on that folder: refused, naming the flag, before anything trains.
    assert "--temperature=1.0 there, --temperature=2.0 here" in refusal(capsys, *args, "--temperature=2")
    assert read_json(root / "study.json") == record


def test_a_control_that_diverges_is_no_result_and_the_study_still_reports(tmp_path, monkeypatch, capsys):
    """The control gets non-finite labels (as from a model whose logits overflowed), so it
    diverges on its first batch. The study still reports: the control is recorded as
    diverged, never as a result, there is no generation 2 - control comparison and the
    report says why, and generation 2 - generation 1 stands."""
    from krefinery.core.relabel import RefinedLabels

    predict = RefinedLabels.predict_on_batch

    def predict_on_batch(self, inputs):
        labels = predict(self, inputs)
        return np.full(np.shape(labels), np.nan, np.float32) if self.alpha == 1.0 else labels

    monkeypatch.setattr(RefinedLabels, "predict_on_batch", predict_on_batch)
    root, models = tmp_path / "study", tmp_path / "models"
    args = (*TINY, "--repeats=1", "--control", f"--workdir={root}", f"--export_dir={models}")
    run_cli(*args)
    record = read_json(root / "study.json")
    run = read_json(root / "repeat_0" / "results.json")
    control = run["control"]
    assert control["diverged"] is True and control["epoch"] == 1
    assert "test_accuracy" not in control and not (root / "repeat_0" / "control.weights.h5").exists()
    assert all("diverged" not in g for g in run["generations"]) and run["finished"] is True
    assert record["control_diverged"] == [0] and record["control"] is None
    assert [(c["a"], c["b"]) for c in record["comparisons"]] == [("generation 2", "generation 1")] * 2
    gain = record["comparisons"][1]
    first, second = (g["test_accuracy"] for g in run["generations"])
    assert gain["metric"] == "test_accuracy" and gain["differences"] == [pytest.approx(second - first)]
    out = capsys.readouterr().out
    assert "The control diverged in every repeat" in out and "no generation 2 - control comparison" in out
    assert "generation 2 vs generation 1 (test accuracy): one repeat: no verdict" in out
    assert "vs control" not in out
    assert (root / "study.png").read_bytes().startswith(b"\x89PNG")
    assert record["export"] == str(models / "digits" / "1")  # A chain generation, as ever.
    # The same command again: the stored divergence is reported, nothing retrains.
    monkeypatch.undo()
    run_cli(*args)
    assert read_json(root / "study.json") == record


def fake_run(seed: int, val: list, test: list, control: tuple) -> dict:
    """A repeat's results.json record, as far as the study reads it."""
    generations = [
        {"generation": k, "val_accuracy": v, "test_accuracy": t, "train_accuracy_unaugmented": v + 0.05,
         "refined_label_disagreement": 0.1 if k < len(val) else None}
        for k, (v, t) in enumerate(zip(val, test), start=1)
    ]
    best = max(generations, key=lambda g: g["val_accuracy"])["generation"]
    return {
        "config": {"seed": seed}, "workdir": f"repeat_{seed}", "generations": generations, "best_generation": best,
        "control": {"val_accuracy": control[0], "test_accuracy": control[1], "train_accuracy_unaugmented": 0.9},
    }


def test_the_study_record_pairs_repeats(tmp_path):
    from krefinery.outputs import study_report

    runs = [
        fake_run(0, [0.80, 0.83, 0.81], [0.60, 0.62, 0.61], (0.80, 0.60)),
        fake_run(1, [0.82, 0.84, 0.80], [0.60, 0.63, 0.59], (0.81, 0.60)),
        fake_run(2, [0.81, 0.85, 0.79], [0.60, 0.62, 0.60], (0.82, 0.59)),
    ]
    config = Config(generations=3, repeats=3, control=True, seed=0)
    record = study_report.study_record(config, runs, tmp_path)
    second = record["generations"][1]["test_accuracy"]
    assert second["values"] == [0.62, 0.63, 0.62]
    assert second["mean"] == pytest.approx(0.623333, abs=1e-6)
    assert second["sd"] == pytest.approx(0.0057735, abs=1e-6)
    assert record["generations"][2]["refined_label_disagreement"] is None
    assert record["control"]["test_accuracy"]["values"] == [0.60, 0.60, 0.59]
    by_name = {(c["a"], c["b"], c["metric"]): c for c in record["comparisons"]}
    # Test: generation 2 - generation 1 = 0.02, 0.03, 0.02 (better); generation 3 - 1 =
    # 0.01, -0.01, 0 (within noise); generation 2 - control = 0.02, 0.03, 0.03 (better:
    # mean 0.026667, half-width 4.303 * 0.0057735 / sqrt(3) = 0.014343).
    gain = by_name[("generation 2", "generation 1", "test_accuracy")]
    assert gain["differences"] == pytest.approx([0.02, 0.03, 0.02]) and gain["verdict"] == "better"
    assert by_name[("generation 3", "generation 1", "test_accuracy")]["verdict"] == "within noise"
    twin = by_name[("generation 2", "control", "test_accuracy")]
    assert twin["differences"] == pytest.approx([0.02, 0.03, 0.03]) and twin["verdict"] == "better"
    assert twin["low"] == pytest.approx(0.026667 - 0.014343, abs=2e-5)
    assert record["best"] == {"repeat": 2, "generation": 2, "val_accuracy": 0.85, "test_accuracy": 0.62, "workdir": "repeat_2"}
    table = study_report.format_study(record)
    assert "generation 2 vs generation 1 (test accuracy): better, +2.33 points" in table
    assert "generation 3 vs generation 1 (test accuracy): within noise" in table
    study_report.study_chart(record, runs, tmp_path / "study.png")
    assert (tmp_path / "study.png").stat().st_size > 10_000

    # Repeat 1's control diverged: no result, so generation 2 - control pairs repeats 0 and
    # 2 (0.02, 0.03), and every other comparison still pairs all three repeats.
    runs[1]["control"] = {"diverged": True, "epoch": 1, "seconds": 1.0}
    record = study_report.study_record(config, runs, tmp_path)
    assert record["control_diverged"] == [1] and record["control"]["repeats"] == [0, 2]
    assert record["control"]["test_accuracy"]["values"] == [0.60, 0.59]
    by_name = {(c["a"], c["b"], c["metric"]): c for c in record["comparisons"]}
    twin = by_name[("generation 2", "control", "test_accuracy")]
    assert twin["repeats"] == [0, 2] and twin["differences"] == pytest.approx([0.02, 0.03])
    assert by_name[("generation 2", "generation 1", "test_accuracy")] == gain  # Unchanged: all three.
    table = study_report.format_study(record)
    assert "The control diverged in repeat(s) 1" in table and "pairs the other 2 repeat(s)" in table
    assert "over 2 paired repeats" in table and "generation 2 vs generation 1 (test accuracy): better, +2.33 points" in table
    study_report.study_chart(record, runs, tmp_path / "study.png")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--repeats=0"], "--repeats=0 must be >= 1"),
        (["--control", "--generations=1"], "--control trains a ground-truth twin of generation 2, so it needs --generations >= 2"),
        (["--repeats=3", "--tune"], "--repeats and --control do not combine with --tune"),
    ],
)
def test_bad_study_values_are_one_line(tmp_path, capsys, args, message):
    assert message in refusal(capsys, *args, f"--workdir={tmp_path / 'run'}")
    assert not (tmp_path / "run").exists()
