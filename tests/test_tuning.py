"""run.py --tune: the search, its reuse of trained generations, resuming, distributed tuning."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    ForkedRun,
    failure,
    hparams_table,
    read_json,
    read_results,
    refusal,
    run_cli,
    trained_generations,
)

TINY = ("--depth=8", "--epochs=1", "--batch_size=64", "--warmup_epochs=0", "--verbose=0")


def read_tuning(workdir: Path) -> dict:
    return read_json(workdir / "tuning.json")


def test_search_reports_every_trial_and_trains_generation_one_once(tmp_path, capsys):
    run_cli("--tune", *TINY, "--tune_generations=1,2", "--tune_temperature=1,4", "--max_trials=4", f"--workdir={tmp_path}")
    record = read_tuning(tmp_path)
    trials = record["trials"]
    assert [t["trial_id"] for t in trials] == ["0", "1", "2", "3"]
    for t in trials:
        assert 1 <= t["generations"] <= 2 and t["temperature"] in (1.0, 2.0, 4.0)
        assert len(t["val_accuracy"]) == t["generations"]
        assert t["objective"] == max(t["val_accuracy"])
        assert t["val_accuracy"][t["chosen_generation"] - 1] == t["objective"]
    # The best trial: the highest objective, the first trial of ties.
    best = max(trials, key=lambda t: (t["objective"], -int(t["trial_id"])))
    assert record["best"]["trial_id"] == best["trial_id"]
    assert record["best"]["val_accuracy"] == best["objective"]
    assert record["best"]["generations"] == trials[int(record["best"]["trial_id"])]["chosen_generation"]
    # The test split is evaluated once, for the best trial: a count over its images.
    from krefinery.data.sources import load_source

    num_test = len(load_source("digits").test.labels)
    correct = record["best"]["test_accuracy"] * num_test
    assert correct == pytest.approx(round(correct), abs=1e-3)
    assert (tmp_path / record["best"]["weights"]).exists()
    # The best model is exported like a normal run's: the next SavedModel version.
    export = Path(record["best"]["export"])
    assert export.name == "1" and (export / "saved_model.pb").exists()
    # Once: the same command on the finished search reports it again, and adds no version.
    run_cli("--tune", *TINY, "--tune_generations=1,2", "--tune_temperature=1,4", "--max_trials=4", f"--workdir={tmp_path}")
    again = read_tuning(tmp_path)
    assert again["best"] == record["best"] and again["trials"] == record["trials"]
    assert sorted(p.name for p in export.parent.iterdir()) == ["1"]

    trained = record["epochs"]["generations_trained"]
    assert [g["generation"] for g in trained].count(1) == 1
    assert len({g["key"] for g in trained}) == len(trained)  # Nothing trained twice.
    # Generation 1 is shared by all trials; trials never retrain a prefix they could reuse.
    needed = {(1, None)} | {(k, t["temperature"]) for t in trials for k in range(2, t["generations"] + 1)}
    assert {(g["generation"], g["temperature"]) for g in trained} == needed
    assert record["epochs"]["trained"] == len(needed) == sum(t["epochs_trained"] for t in trials)
    assert record["epochs"]["naive"] == sum(t["generations"] for t in trials)
    assert record["epochs"]["trained"] < record["epochs"]["naive"]

    # The HParams dashboard lists every trial, cached ones included, under keras-tuner's
    # trial id, with its status, in the declared domains, and with the same metrics whatever
    # its chain's length (its parallel coordinates leave out a trial that lacks one).
    from krefinery.outputs.summaries import TRIAL_METRICS

    assert {t["generations"] for t in trials} == {1, 2}
    experiment, groups = hparams_table(tmp_path / "tensorboard")
    assert sorted(groups) == [t["trial_id"] for t in trials]
    for t in trials:
        group = groups[t["trial_id"]]
        assert group["hparams"] == {"generations": t["generations"], "temperature": t["temperature"], "alpha": t["alpha"]}
        assert [session["status"] for session in group["sessions"]] == ["STATUS_SUCCESS"]
        metrics = {m["name"]["tag"].removeprefix("trial/"): m["value"] for m in group["metricValues"]}
        assert sorted(metrics) == sorted(TRIAL_METRICS)
        assert metrics["val_accuracy"] == pytest.approx(t["objective"], rel=1e-7)
        assert metrics["chosen_generation"] == t["chosen_generation"]
        assert metrics["val_accuracy_gen_1"] == pytest.approx(t["val_accuracy"][0], rel=1e-7)
        assert metrics["val_accuracy_last_generation"] == pytest.approx(t["val_accuracy"][-1], rel=1e-7)
    # Each trial's session holds the curves of its whole chain, trained or from the store,
    # the same figures wherever they were written.
    from test_tensorboard import read_run, sub_runs

    board = tmp_path / "tensorboard"
    expected = [f"trial_{t['trial_id']}" for t in trials] + [
        f"trial_{t['trial_id']}/gen_{k}/{split}"
        for t in trials
        for k in range(1, t["generations"] + 1)
        for split in ("train", "validation")
    ]
    assert sub_runs(board) == sorted(expected)
    for t in trials:
        last = read_run(board / f"trial_{t['trial_id']}" / f"gen_{t['generations']}" / "validation")["epoch/accuracy"]
        assert float(last[1]) == pytest.approx(t["val_accuracy"][-1], rel=1e-7)
    domains = {info["name"]: info for info in experiment["hparamInfos"]}
    assert domains["generations"]["domainInterval"] == {"minValue": 1.0, "maxValue": 2.0}
    assert domains["temperature"]["domainDiscrete"] == [1.0, 2.0, 4.0]
    out = capsys.readouterr().out
    assert "epochs trained" in out and "naive" in out and "val g1" in out


def test_a_chain_continued_from_the_cache_equals_one_trained_in_one_go(tmp_path):
    """Reuse is exact: generation 2 trained on a cached generation 1, in a process that
    has already run other chains, equals generation 2 of a normal two-generation run."""
    from krefinery.chain.experiment import prepare_experiment
    from krefinery.chain.runner import ChainRunner
    from krefinery.chain.store import GenerationStore
    from krefinery.commands.train import train_and_evaluate
    from krefinery.config import Config, Refinement

    config = Config(depth=8, epochs=1, warmup_epochs=0, verbose=0, temperature=2.0, generations=2)
    train_and_evaluate(Config(**{**config.to_dict(), "workdir": os.fspath(tmp_path / "run")}))
    normal = read_results(tmp_path / "run")["generations"]

    runner = ChainRunner(prepare_experiment(config), GenerationStore(tmp_path / "store"))
    runner.run(Refinement(2, temperature=4.0))  # Trains generation 1, shared...
    records = runner.run(Refinement(2, temperature=2.0))  # ...and reuses it here.
    assert [r["trained"] for r in records] == [False, True]
    assert [r["val_accuracy"] for r in records] == [g["val_accuracy"] for g in normal]

    import keras

    expected = keras.models.clone_model(runner.experiment.trainer_for(2).classifier)
    expected.load_weights(tmp_path / "run" / "gen_2.weights.h5")
    loaded = runner.stored(records[1]["key"], 2).classifier
    for got, want in zip(loaded.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_an_interrupted_search_resumes_without_repeating_finished_work(tmp_path, monkeypatch):
    from krefinery.chain import runner as chains

    args = ("--tune", *TINY, "--tune_generations=2,2", "--tune_temperature=1,4", "--max_trials=3", f"--workdir={tmp_path}")
    train = chains.ChainRunner._train
    calls = []

    def interrupt_the_third_training(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:  # Trial 0 trained generations 1 and 2; trial 1 is in flight.
            raise KeyboardInterrupt
        return train(self, *a, **k)

    monkeypatch.setattr(chains.ChainRunner, "_train", interrupt_the_third_training)
    with pytest.raises(KeyboardInterrupt):
        run_cli(*args)
    assert not (tmp_path / "tuning.json").exists()
    finished = (tmp_path / "search" / "trial_0" / "trial.json").read_text()
    assert '"COMPLETED"' in finished
    monkeypatch.setattr(chains.ChainRunner, "_train", train)

    run_cli(*args)
    record = read_tuning(tmp_path)
    assert [t["status"] for t in record["trials"]] == ["COMPLETED"] * 3
    assert sorted(t["temperature"] for t in record["trials"]) == [1.0, 2.0, 4.0]
    assert (tmp_path / "search" / "trial_0" / "trial.json").read_text() == finished
    trained = trained_generations(tmp_path)
    # Generation 1 once, then generation 2 once per temperature: nothing was repeated.
    assert sorted((g["generation"], g["temperature"]) for g in trained) == [(1, None), (2, 1.0), (2, 2.0), (2, 4.0)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.heavy
def test_chief_and_two_workers_complete_a_search_together(tmp_path):
    args = ["--tune", *TINY, "--tune_generations=1,2", "--tune_temperature=1,2", "--max_trials=3", f"--workdir={tmp_path}"]
    port = str(_free_port())
    processes = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
        processes[tuner_id] = ForkedRun(*args, env=env)
    outputs = {}
    try:
        for tuner_id, process in processes.items():
            outputs[tuner_id] = process.wait(timeout=300)
    finally:
        for process in processes.values():
            process.kill()
    for tuner_id, result in outputs.items():
        assert result.returncode == 0, (tuner_id, result.stderr[-2000:])
    assert "worker done" in outputs["tuner0"].stdout and "worker done" in outputs["tuner1"].stdout
    assert "epochs trained" in outputs["chief"].stdout
    record = read_tuning(tmp_path)
    assert [t["status"] for t in record["trials"]] == ["COMPLETED"] * 3
    trained = trained_generations(tmp_path)
    assert [g["generation"] for g in trained].count(1) == 1
    assert len({g["key"] for g in trained}) == len(trained)
    assert {g["worker"] for g in trained} <= {"tuner0", "tuner1"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tune_generations=3,1"], "--tune_generations=3,1 is inverted"),
        (["--tune_generations="], "--tune_generations= must be MIN,MAX"),
        (["--tune_generations=1.5,3"], "must be MIN,MAX with integers"),
        (["--tune_generations=0,2"], "generations must be >= 1"),
        (["--tune_temperature=4,1"], "--tune_temperature=4.0,1.0 is inverted"),
        (["--tune_temperature=0,2"], "temperatures must be positive"),
        (["--tune_alpha=0.5,0.2"], "--tune_alpha=0.5,0.2 is inverted"),
        (["--tune_alpha=0,2"], "alpha must be in [0, 1]"),
        (["--max_trials=0"], "--max_trials=0 must be >= 1"),
        (["--tuner=grid"], "--tuner=grid is not a tuner; choose one of random, bayesian, hyperband"),
    ],
)
def test_bad_search_input_is_one_clear_error_before_any_training(tmp_path, capsys, args, message):
    workdir = tmp_path / "search"
    assert message in refusal(capsys, "--tune", *args, f"--workdir={workdir}")
    assert not workdir.exists()


def test_a_search_whose_generation_one_diverges_ends_with_one_line_and_keeps_its_records(tmp_path, capsys):
    """Generation 1, shared by every trial, diverges: every trial fails (more of them than
    keras-tuner's default limit of 3 consecutive failures), the search says so in one line
    and exits as a diverged run does, exports nothing, and the same command says it again
    from the records it kept, training nothing."""
    workdir, models = tmp_path / "search", tmp_path / "models"
    args = ("--tune", *TINY, "--learning_rate=1e4", "--tune_generations=1,2", "--max_trials=4", f"--workdir={workdir}", f"--export_dir={models}")
    for attempt in range(2):
        line = failure(capsys, *args, code=3)
        assert "no trial of the search" in line and "produced a model" in line
        assert "generation 1" in line and "diverged" in line and "--learning_rate" in line
        statuses = [json.loads(path.read_text())["status"] for path in sorted((workdir / "search").glob("trial_*/trial.json"))]
        assert statuses == ["FAILED"] * 4
        (stored,) = (workdir / "generations").glob("*.json")  # Generation 1, trained once.
        assert json.loads(stored.read_text())["diverged"] is True
        assert not (workdir / "tuning.json").exists() and not (workdir / "best.weights.h5").exists()
        assert not models.exists() or not any(models.rglob("saved_model.pb"))
