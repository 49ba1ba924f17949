"""One claimer for every work directory: runs, searches and studies refuse a folder by the
same rules, each with one line and exit code 2, and a record that cannot be read is one
such line too, never a traceback. Nothing here reads data or trains."""

from __future__ import annotations

import helpers
import pytest

TINY = ("--depth=8", "--epochs=1", "--generations=2", "--batch_size=32", "--verbose=0")
COMMANDS = {
    "run": (),
    "search": ("--tune", "--tune_generations=1,2", "--max_trials=2"),
    "study": ("--repeats=2",),
}


def refusal(capsys, *args: str) -> str:
    """The one error line of a tiny command with `args`, which exits 2."""
    return helpers.refusal(capsys, *TINY, *args)


@pytest.mark.parametrize("kind", COMMANDS)
def test_a_file_is_no_work_directory(kind, tmp_path, capsys):
    path = tmp_path / "taken"
    path.write_text("mine")
    line = refusal(capsys, *COMMANDS[kind], f"--workdir={path}")
    assert f"--workdir={path} is a file" in line
    assert path.read_text() == "mine"


@pytest.mark.parametrize(
    "kind, marker",
    [("run", "run.json"), ("search", "search.json"), ("study", "study.json")],
)
def test_a_damaged_marker_is_one_line_naming_it(kind, marker, tmp_path, capsys):
    (tmp_path / marker).write_text('{"config": {"dataset": "dig')  # Cut mid-write.
    line = refusal(capsys, *COMMANDS[kind], f"--workdir={tmp_path}")
    assert f"{tmp_path / marker} cannot be read" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [marker]


HELD = {"run": ("run.json", "without --tune"), "search": ("search.json", "add --tune"), "study": ("study.json", "same --repeats")}


@pytest.mark.parametrize("kind, held", [(k, h) for k in COMMANDS for h in HELD if k != h])
def test_a_folder_holding_other_work_is_refused_with_the_way_to_resume_it(kind, held, tmp_path, capsys):
    marker, hint = HELD[held]
    (tmp_path / marker).write_text('{"config": {}}\n')
    line = refusal(capsys, *COMMANDS[kind], f"--workdir={tmp_path}")
    assert f"holds a {held}, not a {kind}" in line and hint in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [marker]


def test_a_folder_in_use_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path, capsys):
    import os
    import time

    from helpers import ForkedRun

    from krefinery.config import Config
    from krefinery.outputs import workdirs

    workdir = tmp_path / "run"
    holder = ForkedRun(*TINY, "--epochs=200", f"--workdir={workdir}", f"--export_dir={tmp_path / 'models'}")
    try:
        lock = workdir / workdirs.LOCK
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()):
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.2)
        line = refusal(capsys, "--epochs=200", f"--workdir={workdir}", f"--export_dir={tmp_path / 'models'}")
        assert f"is in use by process {holder.pid} on " in line
        assert not (tmp_path / "models").exists()
    finally:
        holder.kill()  # SIGKILL.
    # The lock went with its process: the folder can be claimed again at once.
    with workdirs.claim(Config(workdir=os.fspath(workdir)), workdirs.RUN, workdir) as held:
        assert f"process {os.getpid()} on " in lock.read_text()
        assert held.path == workdir


def test_a_refused_command_leaves_no_folder_behind(tmp_path, capsys):
    """The folder is claimed before any data is read; bad data then leaves nothing."""
    refusal(capsys, "--batch_size=100000", f"--workdir={tmp_path / 'new'}")
    assert not (tmp_path / "new").exists()
    refusal(capsys, "--tune", "--batch_size=100000", f"--workdir={tmp_path / 'new'}")
    assert not (tmp_path / "new").exists()
