"""What the tests share: running run.py (in this process or a fresh one), small in-memory
sources with known content, and readers of what a run leaves behind.

Fixtures live in conftest.py; everything else shared lives here, once.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[1]

# run.py's entry point.


def run_cli(*args: str) -> None:
    """`python run.py ARGS` in this process: absl's flag parsing as `app.run` does it
    (`run.parse_flags`, so a bad flag is one line and exit 2), then `run.main`.
    Raises SystemExit where the command would exit non-zero."""
    import run

    run.FLAGS.unparse_flags()
    run.main(run.parse_flags(["run.py", *args]))


# The chain that the durable, integrity and stop tests kill, damage and stop: ResNet-8, two
# generations of two epochs (a checkpoint mid-generation), in float32 on every machine.
CHAIN = (
    "--depth=8", "--epochs=2", "--generations=2", "--batch_size=32", "--warmup_epochs=0",
    "--verbose=0", "--precision=float32",
)


def run_chain(workdir: Path, models: Path, *extra: str) -> int:
    """CHAIN (with `extra` flags) in this process, cheaper than a fresh one; its exit code."""
    try:
        run_cli(*CHAIN, *extra, f"--workdir={workdir}", f"--export_dir={models}")
    except SystemExit as exit_:
        return exit_.code
    return 0


def finished_copy(reference: dict, root: Path) -> tuple[Path, Path]:
    """A finished run of CHAIN of its own under `root` (`run/`, `models/`), for a test that
    changes files: the reference's store copied, then the same command, which trains
    nothing, reports and exports. Returns (workdir, models)."""
    workdir, models = root / "run", root / "models"
    shutil.copytree(reference["workdir"] / "generations", workdir / "generations")
    assert run_chain(workdir, models) == 0
    return workdir, models


def copy_stored(reference: dict, workdir: Path, *generations: int) -> None:
    """The stored `generations` (1-based) of a finished run's `results.json`, copied into
    `workdir`'s store: a test that kills a later generation trains only that one."""
    folder = Path(workdir) / "generations"
    folder.mkdir(parents=True, exist_ok=True)
    for generation in generations:
        key = reference["generations"][generation - 1]["key"]
        for suffix in (".weights.h5", ".json"):
            shutil.copy2(Path(reference["workdir"]) / "generations" / f"{key}{suffix}", folder)


def _stderr_of_exit(capsys, *args: str, code: int) -> str:
    """What `python run.py ARGS`, run in this process, writes to stderr; it must exit
    with `code`, without a traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(*args)
    err = capsys.readouterr().err
    assert exit_.value.code == code, err
    assert "Traceback" not in err
    return err


def failure(capsys, *args: str, code: int) -> str:
    """The error line of `python run.py ARGS`, run in this process: it exits with `code`
    and writes one line `error: ...` to stderr (warnings may come before it)."""
    (line,) = error_lines(_stderr_of_exit(capsys, *args, code=code))
    return line


def refusal(capsys, *args: str) -> str:
    """The one line of bad input: `python run.py ARGS`, run in this process, exits with
    2 and writes nothing to stderr but one line, `error: ...`."""
    err = _stderr_of_exit(capsys, *args, code=2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def run_subprocess(
    *args: str,
    cwd: Path = ROOT,
    root: Path = ROOT,
    env: dict | None = None,
    unset: tuple[str, ...] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`python run.py ARGS` in a fresh process, from `cwd`, with the checkout in `root`,
    this environment with `env` added and the variables `unset` removed: what only a real
    process shows (its exit status, stderr as the shell sees it)."""
    environment = {**os.environ, "PYTHONPATH": os.fspath(root), **(env or {})}
    for name in unset:
        environment.pop(name, None)
    return subprocess.run(
        [sys.executable, os.fspath(root / "run.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


# Processes forked from one that has already imported TensorFlow, Keras and the project
# (multiprocessing's forkserver, started once per test process): a run that a test kills,
# signals or runs beside others is a process of its own, but need not pay TensorFlow's
# import (7-8 s of CPU) each time. What only a process started by a shell shows (its
# start-up output, the exit-code smoke tests) keeps `run_subprocess`.
FORK_PRELOAD = ["helpers", "run", "krefinery.commands.train", "krefinery.commands.tune"]


def _run_py_in_fork(args: tuple[str, ...], cwd: str, env: dict, stdout: str, stderr: str) -> None:
    """The child: run.py's `__main__` (absl's `app.run`), in `cwd` with exactly `env`,
    its standard output and error in files, as a shell would redirect them."""
    import keras
    from absl import app

    import run

    wanted = env.get("KERAS_BACKEND", "tensorflow")
    if keras.backend.backend() != wanted:
        raise RuntimeError(f"forked runs are on {keras.backend.backend()}, not {wanted}: use run_subprocess.")
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    sys.argv = ["run.py", *args]
    app.run(run.main, flags_parser=run.parse_flags)


class ForkedRun:
    """`python run.py ARGS` as a forked process (see FORK_PRELOAD), started at once;
    `wait` gives what `run_subprocess` gives (a signal's death is a negative returncode)."""

    def __init__(self, *args: str, cwd: Path = ROOT, env: dict | None = None):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(FORK_PRELOAD)
        self.args = args
        self._folder = Path(tempfile.mkdtemp(prefix="krefinery-forked-"))
        self._out, self._err = self._folder / "stdout", self._folder / "stderr"
        full_env = {**os.environ, **(env or {})}
        self._process = context.Process(
            target=_run_py_in_fork, args=(args, os.fspath(cwd), full_env, os.fspath(self._out), os.fspath(self._err))
        )
        # The first start launches the server, which imports FORK_PRELOAD from its folder:
        # ROOT, so that `run` is run.py, never a `run/` work directory in a test's folder.
        previous = os.getcwd()
        os.chdir(ROOT)
        try:
            self._process.start()
        finally:
            os.chdir(previous)

    def wait(self, timeout: float = 600) -> subprocess.CompletedProcess:
        self._process.join(timeout)
        if self._process.exitcode is None:
            self.kill()
            raise subprocess.TimeoutExpired(["run.py", *self.args], timeout)
        outputs = [path.read_text() if path.exists() else "" for path in (self._out, self._err)]
        shutil.rmtree(self._folder)
        return subprocess.CompletedProcess(["run.py", *self.args], self._process.exitcode, *outputs)

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def kill(self) -> None:
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()
        shutil.rmtree(self._folder, ignore_errors=True)


def run_forked(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python run.py ARGS` in a process of its own, forked (ForkedRun), to its end."""
    return ForkedRun(*args, cwd=cwd, env=env).wait(timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def exit_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The one line a `python run.py` process ended with: it exited with `code` and wrote
    one line `error: ...` to stderr, nothing else (no traceback, and none of TensorFlow's
    start-up notices)."""
    assert result.returncode == code, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def listing(folder: Path) -> list[str]:
    """Every path under `folder`, relative to it, sorted: to show that nothing was written."""
    return sorted(os.fspath(p.relative_to(folder)) for p in folder.rglob("*"))


# What a run leaves behind.


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def read_results(workdir: Path) -> dict:
    return read_json(Path(workdir) / "results.json")


def trained_generations(workdir: Path) -> list[dict]:
    """The store's log of what was trained (`generations/trained.jsonl`), in order."""
    lines = (Path(workdir) / "generations" / "trained.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# The figures of a generation that depend on whether it relabelled for a next one (its
# chain's last does not): they differ between a generation that ends a chain and the same
# generation inside a longer one.
RELABEL_FIGURES = ("refined_label_disagreement", "train_accuracy_unaugmented")


def comparable_generation(generation: dict, *also: str) -> dict:
    """A results.json generation without its timing (and the keys `also`)."""
    return {k: v for k, v in generation.items() if k not in ("seconds", *also)}


def comparable(results: dict) -> dict:
    """results.json without what differs between two runs of the same chain: the folders
    they write to, and timings."""
    results = json.loads(json.dumps(results))
    results.pop("checksum", None)  # A digest of all the rest, folders and timings included.
    for key in ("workdir", "exports"):
        results.pop(key)
    for key in ("workdir", "export_dir"):
        results["config"].pop(key)
    results["generations"] = [comparable_generation(g) for g in results["generations"]]
    return results


def read_weights(path) -> dict[str, np.ndarray]:
    """Every array of a Keras `.weights.h5` file, by its path in the file."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as weights:
        weights.visititems(
            lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def digits_test_batch(count: int) -> dict[str, np.ndarray]:
    """The first `count` examples of the digits test split: `{"image", "label"}` arrays."""
    from krefinery.data.sources import load_source

    test = load_source("digits").test  # Arrays, read without TensorFlow.
    return {"image": test.images[:count], "label": test.labels[:count]}


def serve(export, images: np.ndarray) -> dict[str, np.ndarray]:
    """What a SavedModel's serving signature returns for `images` (uint8)."""
    signature = tf.saved_model.load(os.fspath(export)).signatures["serving_default"]
    return {key: value.numpy() for key, value in signature(images=tf.constant(images)).items()}


# Data.


@contextlib.contextmanager
def mocked_tfds(num_examples: int):
    """TFDS's own mock data, with the network probe told that the network is up."""
    import tensorflow_datasets as tfds

    from krefinery.data import sources as datasets

    with pytest.MonkeyPatch.context() as patch, tfds.testing.mock_data(num_examples=num_examples):
        patch.setattr(datasets, "unreachable_download_hosts", lambda builder: [])
        yield


def write_images(root: Path, classes: dict[str, int], size=(12, 12), seed=0) -> None:
    """`root/<class>/<i>.png` images, each class a different brightness."""
    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 40, (*size, 3)) + 60 * index
            png = tf.io.encode_png(tf.constant(image.astype(np.uint8)))
            (folder / f"{i}.png").write_bytes(png.numpy())


def constant_images(num: int = 60, classes: int = 4, shape=(16, 16, 1)):
    """Example i is an image filled with the value 4i+3 (distinct, non-zero); label i % classes."""
    from krefinery.data.sources import Source

    values = np.arange(num) * 4 + 3
    images = np.broadcast_to(values[:, None, None, None], (num, *shape)).astype(np.uint8)
    labels = np.arange(num) % classes
    data = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    return Source("constant", data, None, tuple(map(str, range(classes))), shape)


def random_images(num: int = 96, classes: int = 4, shape=(8, 8, 1), seed: int = 0):
    from krefinery.data.sources import Source

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, num)
    images = (rng.integers(0, 60, (num, *shape)) + 50 * labels[:, None, None, None]).astype(np.uint8)
    data = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    test = tf.data.Dataset.from_tensor_slices({"image": images[:16], "label": labels[:16]})
    return Source("random", data, test, tuple(map(str, range(classes))), shape)


# Models.


class KnownFunction(keras.Model):
    """Logits that are a fixed function of an image's brightest pixel.

    Translation and flips keep the brightest pixel of a constant image, so the right
    refined label of an augmented image is known from its pixels alone.
    """

    def __init__(self, classes: int = 4):
        super().__init__()
        self.frequencies = tf.range(1, classes + 1, dtype=tf.float32)

    def call(self, images, training=False):
        brightest = tf.reduce_max(tf.cast(images, tf.float32), axis=[1, 2, 3])
        return 4.0 * tf.sin(brightest[:, None] * self.frequencies / 17.0)


def classifier_builder(shape, classes, precision="float32", depth=8):
    from krefinery.core.resnet import build_resnet

    def build(seed: int) -> keras.Model:
        keras.utils.set_random_seed(seed)
        return build_resnet(shape, classes, depth=depth, precision=precision)

    return build


def every_generation(build):
    """`LabelRefinery`'s `build_classifier(generation, seed)` from a `build(seed)`: one
    architecture for every generation."""
    return lambda generation, seed: build(seed)


# TensorBoard.


@contextlib.contextmanager
def tensorboard_server(logdir):
    """TensorBoard's own server on a free port of 127.0.0.1, its data loaded once before it
    answers; stopped on leaving."""
    from tensorboard import program

    servers = []

    def make_server(app, flags):
        servers.append(program.WerkzeugServer(app, flags))
        return servers[-1]

    board = program.TensorBoard(server_class=make_server)
    board.configure(
        logdir=str(logdir), host="127.0.0.1", port=0, load_fast="false",
        reload_interval=0, reload_task="blocking",
    )
    url = board.launch()
    try:
        yield url.rstrip("/")
    finally:
        servers[0].shutdown()
        servers[0].server_close()


def get_json(url: str, body: dict | None = None):
    """GET, or POST `body` as JSON (as the HParams dashboard does), with a bounded wait."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())


def hparams_table(logdir: Path) -> tuple[dict, dict[str, dict]]:
    """What the HParams dashboard reads from TensorBoard's server: the experiment (domains,
    metrics) and `{row name: session group}`, over every status."""
    from tensorboard.plugins.hparams import api_pb2

    statuses = list(api_pb2.Status.keys())
    with tensorboard_server(logdir) as url:
        experiment = get_json(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
        groups = get_json(
            f"{url}/data/plugin/hparams/session_groups",
            {"experimentName": "", "allowedStatuses": statuses, "colParams": [], "startIndex": 0, "sliceSize": 100},
        )
    return experiment, {group["name"]: group for group in groups["sessionGroups"]}


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` at `path` where this user may mount one (yields True), else a
    plain folder (yields False)."""
    path.mkdir()
    try:
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        )
        mounted = mount.returncode == 0
    except OSError:  # No mount command here.
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:  # Lazily: TensorBoard may still hold a file open in this process.
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
