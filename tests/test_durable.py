"""Durable runs: killed (kill -9) or out of disk anywhere, the same command finishes the run
with the results of a run never interrupted; a diverged generation is never used."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    CHAIN,
    RELABEL_FIGURES,
    comparable,
    exit_line,
    failure,
    listing,
    read_results,
    refusal,
    run_chain,
    run_forked,
    run_subprocess,
    small_disk,
    trained_generations,
)

from krefinery import faults


def killed_at(point: str, workdir: Path, models: Path) -> None:
    """`python run.py` in a process of its own that SIGKILLs itself at a named point."""
    result = run_forked(
        *CHAIN, f"--workdir={workdir}", f"--export_dir={models}",
        cwd=workdir.parent, env={faults.KILL_AT: point}, timeout=600,
    )
    assert result.returncode == -9, result.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(chain_reference) -> dict:
    """The chain's results, run once (in conftest) and never interrupted."""
    return chain_reference["results"]


def test_killed_anywhere_the_same_command_finishes_the_same_run(reference, tmp_path, capsys):
    workdir, models = tmp_path / "run", tmp_path / "models"
    store = workdir / "generations"
    # kill -9 during an epoch of generation 1 (after its first checkpoint)...
    killed_at("gen1.epoch2.batch5", workdir, models)
    assert [p.name for p in store.glob("*.ckpt.json")] and not (workdir / "results.json").exists()
    # ...between generation 1's relabel and generation 2...
    killed_at("gen1.relabelled", workdir, models)
    assert [g["generation"] for g in read_results(workdir)["generations"]] == [1]
    # ...during an epoch of generation 2...
    killed_at("gen2.epoch1.batch10", workdir, models)
    # ...and during the export, once the SavedModel is written but not yet in place.
    killed_at("export", workdir, models)
    assert read_results(workdir)["finished"] is False
    assert [p.name for p in (models / "digits").iterdir()][0].startswith(".tmp-export-")

    assert run_chain(workdir, models) == 0
    results = read_results(workdir)
    assert comparable(results) == comparable(reference)
    assert results["finished"] is True
    # Exactly one version; the killed export's temporary folder is gone.
    assert [p.name for p in (models / "digits").iterdir()] == ["1"]
    assert results["exports"] == {"best": str(models / "digits" / "1")}
    assert [entry["generation"] for entry in trained_generations(workdir)] == [1, 2]
    assert not list(store.glob("*.ckpt*")), "checkpoints of stored generations are removed"

    # A finished run, rerun: its table again, nothing trained or exported.
    capsys.readouterr()
    assert run_chain(workdir, models) == 0
    assert "best generation" in capsys.readouterr().out
    assert read_results(workdir) == results
    # With its export gone, the rerun exports it again and the results stay the same.
    shutil.rmtree(models / "digits" / "1")
    assert run_chain(workdir, models) == 0
    assert [p.name for p in (models / "digits").iterdir()] == ["1"]
    assert comparable(read_results(workdir)) == comparable(reference)


def test_out_of_disk_space_is_one_line_and_the_same_command_resumes(reference, tmp_path):
    """A 1 MB tmpfs fills up as generation 1 writes its second checkpoint (or, where
    mounting is not allowed, ENOSPC is injected at that write); a one-generation chain,
    whose generation 1 is the reference's. The run that fills the disk is the exit 4
    smoke test: a real process, as a shell runs it; the rerun runs in this one."""
    disk, models = tmp_path / "disk", tmp_path / "models"
    workdir = disk / "run"
    store = workdir / "generations"
    with small_disk(disk, "1m") as real:
        result = run_subprocess(
            *CHAIN, "--generations=1", f"--workdir={workdir}", f"--export_dir={models}",
            cwd=tmp_path, env={} if real else {faults.ENOSPC_AT: "ckpt-2.npz"}, timeout=600,
        )
        line = exit_line(result, 4)
        assert "no space left" in line and str(workdir) in line and "rerun the same command" in line
        assert not list(store.glob(".tmp-*")), "a temporary file was left behind"
        for path in [*store.glob("*.json"), *workdir.glob("*.json")]:
            json.loads(path.read_text())  # Whole, or not there.
        state = json.loads(next(store.glob("*.ckpt.json")).read_text())
        assert state["epoch"] == 1 and (store / state["weights"]["name"]).is_file()  # The last whole one.
        assert not list(store.glob("*.weights.h5")) and not (workdir / "results.json").exists()

        if real:  # Free space: the tmpfs grows.
            subprocess.run(["mount", "-o", "remount,size=8m", "tmpfs", str(disk)], check=True)
        assert run_chain(workdir, models, "--generations=1") == 0  # The same command.
        results = comparable(read_results(workdir))
    (alone,), first = results["generations"], comparable(reference)["generations"][0]
    # The last generation hands no labels on: its fit is evaluated, not read off a relabel.
    disagreement, fit = RELABEL_FIGURES
    assert (alone.pop(disagreement), first.pop(disagreement)) == (None, pytest.approx(1 - first[fit]))
    assert alone.pop(fit) == pytest.approx(first.pop(fit), abs=1e-6)
    assert alone == first
    assert results["finished"] is True


def test_a_diverging_chain_stops_with_one_line_and_exports_nothing_of_it(tmp_path):
    """Also the exit 3 smoke test: a real process, as a shell runs it."""
    workdir, models = tmp_path / "run", tmp_path / "models"
    result = run_subprocess(
        *CHAIN, "--learning_rate=1e4", f"--workdir={workdir}", f"--export_dir={models}", cwd=tmp_path, timeout=600
    )
    line = exit_line(result, 3)
    assert "generation 1 diverged in epoch 1" in line and "--learning_rate" in line
    results = read_results(workdir)
    assert results["diverged"] == {"generation": 1, "epoch": 1}
    assert results["generations"][0]["diverged"] is True
    assert results["best_generation"] is None and results["finished"] is False
    assert results["exports"] == {}
    assert not (models / "digits").exists() or not any((models / "digits").iterdir())


def test_a_later_generation_that_diverges_keeps_the_earlier_ones(tmp_path, monkeypatch, capsys):
    """Generation 1 relabels with non-finite values (as from a model whose logits
    overflowed): generation 2 diverges on its first batch, generation 1 is exported."""
    import tensorflow as tf

    from krefinery.core import relabel

    # Generation 1's refined labels come out NaN, so generation 2's loss is NaN at once.
    monkeypatch.setattr(
        relabel, "refined_labels", lambda logits, *_: tf.fill(tf.shape(logits), float("nan"))
    )
    args = (
        *CHAIN, "--epochs=1",
        f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'models'}",
    )
    assert "generation 2 diverged in epoch 1" in failure(capsys, *args, code=3)
    results = read_results(tmp_path / "run")
    first, second = results["generations"]
    assert "diverged" not in first and second["diverged"] is True and second["epoch"] == 1
    assert results["best_generation"] == 1 and results["finished"] is False
    assert results["exports"] == {"best": str(tmp_path / "models" / "digits" / "1")}
    assert (tmp_path / "run" / "gen_1.weights.h5").exists()
    assert not (tmp_path / "run" / "gen_2.weights.h5").exists()

    # The divergence is stored: the same command reports it again without training.
    monkeypatch.undo()
    assert "generation 2 diverged in epoch 1" in failure(capsys, *args, code=3)
    assert read_results(tmp_path / "run")["generations"] == results["generations"]
    assert [p.name for p in (tmp_path / "models" / "digits").iterdir()] == ["1"]


def test_a_temperature_that_breaks_the_labels_is_named(tmp_path, capsys):
    """At T = 1e-300 the logits divided by T overflow: generation 2's labels are not
    finite, it diverges at once, and the line names the temperature, not the step."""
    args = (*CHAIN, "--epochs=1", "--temperature=1e-300", f"--workdir={tmp_path / 'run'}")
    line = failure(capsys, *args, f"--export_dir={tmp_path / 'models'}", code=3)
    assert "generation 2 diverged in epoch 1" in line
    assert "refined at --temperature=1e-300, were not finite" in line and "--learning_rate" not in line
    assert read_results(tmp_path / "run")["diverged"] == {"generation": 2, "epoch": 1, "labels_not_finite": True}


def test_label_figures_of_non_finite_labels_do_not_read_as_clean():
    from krefinery.analysis.diagnostics import label_stats
    from krefinery.core.losses import entropy

    table = np.full((4, 3), np.nan, np.float32)
    assert np.isnan(label_stats(table, np.zeros(4, int)).mean_entropy)
    assert np.isnan(entropy(table).numpy()).all()
    assert entropy(np.eye(3, dtype=np.float32)).numpy().tolist() == [0.0, 0.0, 0.0]


def test_a_workdir_holding_a_run_with_other_settings_is_refused_naming_the_flags(reference, capsys):
    workdir = Path(reference["workdir"])
    before = listing(workdir)
    line = refusal(capsys, *CHAIN, "--epochs=3", "--seed=1", f"--workdir={workdir}")
    assert "--epochs=2 there, --epochs=3 here" in line and "--seed=0 there, --seed=1 here" in line
    assert listing(workdir) == before


def test_two_default_workdirs_made_in_the_same_second_differ(tmp_path):
    from krefinery.config import Config
    from krefinery.outputs import workdirs

    # Three in a row take well under a second, so at least two share a time stamp; each
    # is held (and marked) as a run would, so none is given back as unused.
    made = []
    with contextlib.ExitStack() as held:
        for _ in range(3):
            claim = held.enter_context(workdirs.claim(Config(), workdirs.RUN, None))
            claim.mark({"config": Config().settings()})
            made.append(claim.path)
    assert len(set(made)) == 3 and all(path.is_dir() for path in made)
    stamps = [path.name.split("-")[1] + path.name.split("-")[2] for path in made]
    assert len(set(stamps)) < 3
    assert all(path.parent == Path("runs") and path.name.startswith("digits-") for path in made)
