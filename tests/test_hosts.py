"""One chain trained by several processes (JAX's distributed runtime), as on several hosts.

Two processes on 127.0.0.1 stand for two hosts: each is `python run.py` with Keras's
multi-process variables, one CPU device each, gloo's collectives between them. Every
launch has a hard timeout, so a lost peer cannot hold the suite.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    CHAIN,
    ROOT,
    comparable,
    read_json,
    read_results,
    read_weights,
    trained_generations,
)

pytest.importorskip("jax")

# CHAIN on the in-memory path: the batches every process makes itself, on its device.
ARGS = (*CHAIN, "--input=memory")
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(
    *args: str,
    processes: int = 2,
    each: dict[int, dict] | None = None,
    only: tuple[int, ...] | None = None,
    extra: dict[int, tuple[str, ...]] | None = None,
) -> dict[int, subprocess.CompletedProcess]:
    """`KERAS_BACKEND=jax python run.py ARGS` as process i of `processes` (all of them, or
    `only` these), each with the environment `each[i]` and the flags `extra[i]` added;
    their results, by process index, once all have ended. Their output goes to files,
    so that no process blocks on a full pipe while the others wait for it."""
    port = free_port()
    started = {}
    with contextlib.ExitStack() as files:
        for index in only or range(processes):
            env = {
                **os.environ,
                "PYTHONPATH": os.fspath(ROOT),
                "KERAS_BACKEND": "jax",
                "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
                "KERAS_DISTRIBUTION_NUM_PROCESSES": str(processes),
                "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
                **(each or {}).get(index, {}),
            }
            env.pop("XLA_FLAGS", None)
            out, err = (files.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2))
            command = [sys.executable, os.fspath(ROOT / "run.py"), *args, *(extra or {}).get(index, ())]
            started[index] = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err, text=True), out, err)
        results = {}
        try:
            for index, (process, out, err) in started.items():
                process.wait(timeout=TIMEOUT)
                out.seek(0)
                err.seek(0)
                results[index] = subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read())
        finally:
            for process, _, _ in started.values():
                process.kill()
    return results


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def one_process_on_two_devices(root: Path) -> dict:
    """ARGS trained by one process over two CPU devices (`--distribute=data_parallel`):
    the same global batches as two processes of one device each."""
    env = {
        **os.environ,
        "PYTHONPATH": os.fspath(ROOT),
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    for name in ("KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID", "KERAS_DISTRIBUTION_JOB_ADDRESSES"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, os.fspath(ROOT / "run.py"), *ARGS, "--distribute=data_parallel",
         f"--workdir={root / 'run'}", f"--export_dir={root / 'models'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"workdir": root / "run", "results": read_results(root / "run")}


def assert_same_chain(workdir: Path, one: dict) -> None:
    """The chain in `workdir`, trained by two processes, is `one`'s to the bit: each
    all-reduce sums two shares, and the sum of two floats is the same in either order,
    whether the shares meet within one process or across two."""
    results = read_results(workdir)
    assert results["runtime"] == {**one["results"]["runtime"], "processes": 2}
    mine, theirs = comparable(results), comparable(one["results"])
    for record in (mine, theirs):
        for generation in record["generations"]:
            generation.pop("key")  # The runtime is in each key.
    for part in ("generations", "best_generation", "data"):
        assert mine[part] == theirs[part], part
    for generation in (1, 2):
        two, single = (read_weights(folder / f"gen_{generation}.weights.h5") for folder in (workdir, one["workdir"]))
        assert two.keys() == single.keys()
        for name in two:
            np.testing.assert_array_equal(two[name], single[name], err_msg=f"generation {generation}: {name}")


def test_two_processes_killed_in_generation_2_resume_and_equal_one_process_on_two_devices(tmp_path):
    """A study of one chain and its control, on two processes. kill -9 of process 1
    mid-epoch 2 of generation 2: process 0 stops within seconds with one line and exit
    code 5. The same two commands resume generation 2 from its epoch-1 checkpoint, train
    the control and report; the chain ends equal to one process's on two devices, never
    interrupted. Process 0 alone wrote the study, its run and one export version."""
    one = one_process_on_two_devices(tmp_path / "one")
    study, models = tmp_path / "study", tmp_path / "models"
    flags = (*ARGS, "--control", f"--workdir={study}", f"--export_dir={models}")
    killed = launch(*flags, each={1: {"KREFINERY_KILL_AT": "gen2.epoch2.batch1"}})
    assert killed[1].returncode == -9
    assert killed[0].returncode == 5, killed[0].stderr[-3000:]
    (line,) = errors(killed[0])
    assert line.startswith("error: process 0 of 2: another process of the run is gone (")
    assert line.endswith("the last checkpoint is on disk: start the same command on every host to resume.")
    assert "Traceback" not in killed[0].stderr
    run = study / "repeat_0"
    assert not read_results(run)["finished"]

    resumed = launch(*flags)
    for result in resumed.values():
        assert result.returncode == 0, result.stderr[-3000:]
    assert "Study: 1 repeat(s), training seeds 0" in resumed[0].stdout
    assert resumed[1].stdout.strip().splitlines()[-1] == "process 1 of 2 done; process 0 reports."
    trained = [(g["generation"], g["epochs"], g["alpha"]) for g in trained_generations(run)]
    assert trained == [(1, 2, None), (2, 1, 0.0), (2, 2, 1.0)]  # The chain, resumed; the control.
    assert read_json(study / "study.json")["control"]["repeats"] == [0]
    assert_same_chain(run, one)
    assert os.listdir(models / "digits") == ["1"]


def test_processes_started_apart_are_refused_before_anything_is_written(tmp_path):
    """Other flags, or a work directory one process does not see: every process says so
    in one line and exits 2, and no folder is left behind."""
    workdir = tmp_path / "run"
    apart = launch(*CHAIN, f"--workdir={workdir}", extra={1: ("--epochs=3", "--seed=7")})
    for index, result in apart.items():
        assert result.returncode == 2, result.stderr[-3000:]
        assert errors(result) == [
            "error: process 1 of 2 started with other flags than process 0 (--epochs, --seed): "
            "start the same command on every host."
        ]
    assert not workdir.exists()

    elsewhere = launch(*CHAIN, extra={0: (f"--workdir={workdir}",), 1: (f"--workdir={tmp_path / 'other'}",)})
    for index, result in elsewhere.items():
        assert result.returncode == 2, result.stderr[-3000:]
        (line,) = errors(result)
        assert line.startswith("error: process 1 of 2 cannot see the work directory process 0 claimed")
    assert not workdir.exists() and not (tmp_path / "other").exists()


def test_a_process_whose_peers_never_come_stops_with_one_line(tmp_path):
    """Process 1 alone: no process 0 to join. It stops after the stated wait, with one
    line naming the missing process and its address, and exit code 5."""
    alone = launch(*CHAIN, f"--workdir={tmp_path / 'run'}", only=(1,), each={1: {"KREFINERY_JOIN_TIMEOUT": "3"}})
    assert alone[1].returncode == 5
    (line,) = errors(alone[1])
    assert line.startswith("error: process 1 of 2: not every process joined within 3 s; check that process 0 (at 127.0.0.1:")
    assert not (tmp_path / "run").exists()

