"""Clean stops and exports that cannot be fooled: SIGINT and SIGTERM stop a run with one
line and exit 130/143 wherever they hit, leaving nothing half-written; a full export disk
is exit 4; an export folder that cannot be created is refused before any data is read; a
damaged export is exported again. Each time the same command then finishes the run an
uninterrupted one would have."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    CHAIN,
    ROOT,
    comparable,
    finished_copy,
    read_results,
    run_chain,
    run_cli,
    small_disk,
)


def args(workdir: Path, models: Path, *extra: str) -> tuple[str, ...]:
    return (*CHAIN, *extra, f"--workdir={workdir}", f"--export_dir={models}")


def run_here(workdir: Path, models: Path, *extra: str, signal_at: str | None = None) -> int:
    """`python run.py` in this process; its exit code. `signal_at` (`POINT:SIGNAL`): the
    process sends itself SIGNAL at that point (krefinery/faults.py)."""
    if signal_at:
        os.environ["KREFINERY_SIGNAL_AT"] = signal_at
    try:
        return run_chain(workdir, models, *extra)
    finally:
        os.environ.pop("KREFINERY_SIGNAL_AT", None)


def own_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's C++ log lines and the under-fit warnings a run prints
    as its generations are recorded (the tiny chain under-fits)."""
    return [
        line for line in stderr.splitlines()
        if line.strip()
        and not (line[:1] in "IWE" and line[1:5].isdigit())
        and not line.startswith(("WARNING: All log messages", "WARNING:tensorflow:", "warning: generation"))
    ]


def leftovers(*folders: Path) -> list[str]:
    """Temporary files and folders (`.tmp-*`, `.tmp-export-*`) anywhere under `folders`."""
    return [os.fspath(p) for folder in folders if folder.exists() for p in folder.rglob(".tmp-*")]


def versions(models: Path) -> list[str]:
    folder = models / "digits"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def reference(chain_reference) -> dict:
    """The chain run once (in conftest), never interrupted: `{"results", "workdir", "models"}`."""
    return chain_reference


def test_signals_anywhere_stop_with_one_line_and_the_same_command_finishes(reference, tmp_path, capsys):
    workdir, models = tmp_path / "run", tmp_path / "models"
    store = workdir / "generations"

    # SIGTERM to a real `python run.py` during generation 1's second epoch.
    result = subprocess.run(
        [sys.executable, "run.py", *args(workdir, models)],
        cwd=ROOT, env={**os.environ, "KREFINERY_SIGNAL_AT": "gen1.epoch2.batch3:SIGTERM"},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 143, result.stderr[-3000:]
    assert own_lines(result.stderr) == [
        "interrupted by SIGTERM in generation 1, epoch 2; the same command resumes from the end of epoch 1"
    ], result.stderr[-3000:]
    assert not leftovers(workdir, models)
    state = json.loads(next(store.glob("*.ckpt.json")).read_text())
    assert state["epoch"] == 1 and [p.name for p in store.glob("*.npz")] == [state["weights"]["name"]]
    assert not (workdir / "results.json").exists() and not models.exists()

    # The same handlers in this process (cheaper than a fresh one), at the other points.
    cases = [
        # Between generations: generation 1 stored and relabelled, generation 2 not begun.
        ("gen1.relabelled:SIGINT", 130, "interrupted by SIGINT after generation 1; the same command resumes at generation 2"),
        # During the export: the SavedModel and its manifest written, not yet renamed into place.
        ("export:SIGINT", 130, f"interrupted by SIGINT during the export to {models / 'digits'}; the same command exports the model"),
    ]
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    for point, code, line in cases:
        capsys.readouterr()
        assert run_here(workdir, models, signal_at=point) == code, point
        err = capsys.readouterr().err
        assert own_lines(err) == [line] and "Traceback" not in err, err
        assert not leftovers(workdir, models), point
        assert versions(models) == [], "an interrupted export leaves no version"
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert read_results(workdir)["finished"] is False

    assert run_here(workdir, models) == 0  # The same command.
    results = read_results(workdir)
    assert comparable(results) == comparable(reference["results"]) and results["finished"] is True
    assert versions(models) == ["1"] and results["exports"] == {"best": str(models / "digits" / "1")}
    assert not leftovers(workdir, models) and not list(store.glob("*.ckpt*"))
    trained = [json.loads(line) for line in (store / "trained.jsonl").read_text().splitlines()]
    assert [(t["generation"], t["epochs"]) for t in trained] == [(1, 1), (2, 2)]  # Generation 1 resumed after epoch 1.


def trained_copy(reference: dict, workdir: Path) -> None:
    """The reference's work directory, trained but not yet finished: a run that stopped
    before its export (no results.json), so the same command only evaluates and exports."""
    shutil.copytree(reference["workdir"], workdir, ignore=shutil.ignore_patterns("results.json", "tensorboard"))


def test_a_full_export_disk_is_exit_4_and_the_same_command_exports_once_space_is_freed(
    reference, tmp_path, monkeypatch, capsys
):
    """A 256 KiB tmpfs cannot hold the SavedModel (330 KiB of variables): TensorFlow's
    writer fails with ResourceExhaustedError. Where mounting is not allowed, the writer is
    made to fail the same way."""
    workdir, disk = tmp_path / "run", tmp_path / "disk"
    models = disk / "models"
    trained_copy(reference, workdir)
    with small_disk(disk, "256k") as real:
        if not real:
            import tensorflow as tf

            save = tf.saved_model.save

            def full(*args, **kwargs):
                monkeypatch.setattr(tf.saved_model, "save", save)
                raise tf.errors.ResourceExhaustedError(None, None, "saved_model.pb.tmp1; No space left on device")

            monkeypatch.setattr(tf.saved_model, "save", full)
        capsys.readouterr()
        assert run_here(workdir, models) == 4
        (line,) = own_lines(capsys.readouterr().err)
        assert line.startswith(f"error: no space left on the device writing {models / 'digits'};"), line
        assert versions(models) == [] and not leftovers(workdir, disk)
        assert read_results(workdir)["finished"] is False and read_results(workdir)["exports"] == {}

        if real:  # Free space: the tmpfs grows.
            subprocess.run(["mount", "-o", "remount,size=4m", "tmpfs", str(disk)], check=True)
        assert run_here(workdir, models) == 0  # The same command.
        results = read_results(workdir)
        assert versions(models) == ["1"] and results["finished"] is True and not leftovers(disk)
    assert comparable(results) == comparable(reference["results"])


def test_an_export_dir_that_cannot_be_created_is_refused_before_any_data_is_read(tmp_path, monkeypatch, capsys):
    """Root passes the permission check on /proc and on a read-only mount; creating a
    folder there is what fails, so that is what is tried."""
    from krefinery.chain import experiment
    from krefinery.commands import train

    def no_data(*args, **kwargs):
        raise AssertionError("data was read")

    monkeypatch.setattr(train, "prepare_experiment", no_data)
    monkeypatch.setattr(experiment, "prepare_experiment", no_data)
    workdir = tmp_path / "run"
    assert run_here(workdir, Path("/proc/krefinery-test")) == 2
    (line,) = own_lines(capsys.readouterr().err)
    assert line.startswith("error: --export_dir=/proc/krefinery-test: ") and "cannot be created" in line, line
    assert not workdir.exists() and not Path("/proc/krefinery-test").exists()

    with small_disk(tmp_path / "readonly", "1m") as real:
        if real:
            subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "readonly")], check=True)
            assert run_here(workdir, tmp_path / "readonly" / "models") == 2
            (line,) = own_lines(capsys.readouterr().err)
            assert "cannot be created" in line and "(Read-only file system)" in line, line
            assert not workdir.exists()


def test_a_damaged_export_is_exported_again_as_the_next_version(reference, tmp_path, capsys):
    """Version 1's variables data file is lost after the run finished (a loss that a
    check for saved_model.pb and variables/variables.index alone would miss): the same
    command exports the model again as version 2, leaves version 1 as it is, and
    --predict on the model folder uses version 2."""
    from test_predict import write_digits

    from krefinery.outputs import export

    workdir, models = finished_copy(reference, tmp_path / "finished")
    model = models / "digits"
    lost = next((model / "1" / "variables").glob("variables.data-*"))
    lost.unlink()
    capsys.readouterr()
    assert run_here(workdir, models) == 0
    err = capsys.readouterr().err
    assert [line for line in own_lines(err) if "damaged" in line] == [
        f"warning: {model / '1'} is damaged: variables/{lost.name} is missing; it is left in "
        f"place, and the model was exported again as {model / '2'}."
    ], err
    assert versions(models) == ["1", "2"] and not lost.exists()
    results = read_results(workdir)
    assert results["exports"] == {"best": str(model / "2")} and results["finished"] is True
    assert comparable(results) == comparable(reference["results"])

    paths, _ = write_digits(tmp_path, count=2)
    capsys.readouterr()
    run_cli("--predict", f"--model={model}", *paths)
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and not own_lines(err)
    assert export.resolve_model_path(model) == (model / "2", [])

    # A rerun now finds version 2 whole: nothing more is exported.
    assert run_here(workdir, models) == 0 and versions(models) == ["1", "2"]

    # --predict passes over a damaged version as it does an incomplete one: a copy whose
    # version 3 has a variables file cut short (saved_model.pb and variables.index intact).
    copy = tmp_path / "digits"
    shutil.copytree(model, copy)
    shutil.copytree(copy / "2", copy / "3")
    data = next((copy / "3" / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[:-8])
    capsys.readouterr()
    run_cli("--predict", f"--model={copy}", *paths)
    out, err = capsys.readouterr()
    assert own_lines(err) == [
        f"note: --model={copy}: skipped damaged version(s) 3 (variables/{data.name} differs from "
        "the version's manifest); using version 2."
    ]
    assert len(out.splitlines()) == 2
    with pytest.raises(SystemExit) as exit_:
        run_cli("--predict", f"--model={copy / '3'}", *paths)
    assert exit_.value.code == 2
    assert own_lines(capsys.readouterr().err) == [
        f"error: --model={copy / '3'} is damaged: variables/{data.name} differs from the "
        "version's manifest; use another version."
    ]


def test_a_signal_swallowed_where_python_ignores_exceptions_is_raised_at_the_next_check(capsys):
    """TensorFlow frees graphs in weakref callbacks and `__del__`s, where Python only prints
    an exception: the stop stays pending, unprinted, and the next safe point raises it."""
    from krefinery import stops
    from krefinery.errors import Interrupted

    class Freed:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook
    with stops.on_signals():
        Freed()  # The stop is raised, and swallowed, in its __del__.
        assert stops.pending() == signal.SIGINT
        with pytest.raises(Interrupted) as stop:
            stops.check()
    assert str(stop.value) == "interrupted by SIGINT; the same command resumes" and stop.value.exit_code == 130
    assert "Exception ignored" not in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook) == handlers
    assert stops.pending() is None
    stops.check()  # Outside `on_signals` nothing is pending.


def test_a_search_and_a_study_stop_the_same_way(tmp_path, monkeypatch, capsys):
    """A signal in a search's trial, or in a study's repeat (sent here as the chain starts,
    so nothing trains): 143 and one line naming the trial or the repeat. The trial is not
    recorded as failed: keras-tuner sees no Exception, so the oracle gives it again when
    the search is resumed (resuming a search stopped mid-trial: test_tuning.py)."""
    from krefinery.chain.runner import ChainRunner
    from krefinery.commands import train

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the command")

    monkeypatch.setattr(ChainRunner, "run", stopped)
    search, models = tmp_path / "search", tmp_path / "models"
    capsys.readouterr()
    assert run_here(search, models, "--tune", "--max_trials=2") == 143
    assert own_lines(capsys.readouterr().err) == ["interrupted by SIGTERM (trial 0); the same command resumes"]
    (trial,) = [json.loads(p.read_text()) for p in search.glob("search/trial_*/trial.json")]
    assert trial["status"] == "RUNNING" and not leftovers(search) and not models.exists()

    monkeypatch.setattr(train, "train_and_evaluate", stopped)
    study = tmp_path / "study"
    assert run_here(study, models, "--repeats=2") == 143
    assert own_lines(capsys.readouterr().err) == ["interrupted by SIGTERM (repeat 1 of 2); the same command resumes"]
    assert not leftovers(study) and not models.exists()
