"""Shared fixtures (the helpers they use live in helpers.py)."""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's kernels as run.py loads them (oneDNN on x86-64), here and in every process
# a test starts: tests check what users run.
from krefinery.runtime.device import prefer_onednn  # noqa: E402

prefer_onednn()
# No test's outcome may hang on timing: `--precision=auto` reads the table of machine kinds
# unless a test asks for the probe (krefinery/runtime/probe.py).
os.environ["KREFINERY_PRECISION_PROBE"] = "0"

import pytest
from helpers import read_results, run_chain, run_cli

# Test files whose tests share a fixture that costs a chain or a process (a session- or
# module-scoped run). Under xdist each worker makes its own copy of a fixture it needs,
# so each group of files goes to one worker as a whole and its fixture is made once.
# (xdist's `--dist loadgroup` would group tests by `xdist_group` marks, but under pytest
# 9.2 it silently stops grouping: pytest-dev/pytest-xdist#1386.)
SHARED_FIXTURE_FILES = {
    "tests/test_tensorboard.py": "digits_run",
    "tests/test_export.py": "digits_run",
    "tests/test_predict.py": "digits_run",
    "tests/test_durable.py": "chain_reference",
    "tests/test_refinery_arch.py": "online_run",
    "tests/test_networks.py": "chain",
    "tests/test_arrays.py": "jax_chains",
    "tests/test_memory_input.py": "runs",
    "tests/test_backends.py": "jax_run",
    "tests/test_integrity.py": "chain_reference",
    "tests/test_stops.py": "chain_reference",
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`-n N` (xdist's `--dist load`): every test is its own unit of work, in collection
    order, but for the groups of SHARED_FIXTURE_FILES, which go first (xdist sends the
    units with the most tests first). Another `--dist` is left to xdist."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SHARED_FIXTURE_FILES.get(nodeid.split("::", 1)[0], nodeid)

    return SharedFixtureScheduling(config, log)


def pytest_configure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER") and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        # One JAX compilation cache for the session, shared by the workers and every JAX
        # process they start (they inherit this environment): a step that an earlier
        # process compiled for the same model is read back, not compiled again.
        config.jax_cache = tempfile.mkdtemp(prefix="krefinery-jax-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config.jax_cache
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    config.addinivalue_line(
        "markers", "heavy: a test that takes a minute or more; collected first, so that xdist starts it early"
    )


def pytest_unconfigure(config):
    if getattr(config, "jax_cache", None):
        shutil.rmtree(config.jax_cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    # The longest tests first (a stable sort): a long one started last keeps one worker
    # busy while the other idles.
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


TINY_RUN = ("--depth=8", "--epochs=2", "--generations=2", "--batch_size=32", "--warmup_epochs=0", "--verbose=0")


@pytest.fixture(autouse=True)
def _outputs_in_tmp(tmp_path, monkeypatch):
    """Runs start in a temporary folder, so default outputs (saved_models/) never land in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> dict:
    """One tiny digits chain (2 generations, every generation exported), shared by the
    TensorBoard, export and predict tests: `{"workdir", "export_dir", "results"}`.

    It runs in mixed_bfloat16 on every machine (test_cli's chains run in float32), so
    both precisions are exercised whatever `--precision=auto` resolves to here."""
    root = tmp_path_factory.mktemp("digits_run")
    run_cli(*TINY_RUN, "--precision=mixed_bfloat16", "--export_all_generations", f"--workdir={root / 'run'}", f"--export_dir={root / 'models'}")
    return {"workdir": root / "run", "export_dir": root / "models", "results": read_results(root / "run")}


@pytest.fixture(scope="session")
def chain_reference(tmp_path_factory) -> dict:
    """helpers.CHAIN run once, never interrupted, for the durable, integrity and stop tests
    to compare with: `{"results", "workdir", "models"}`. Read only: a test that changes a
    finished run's files makes its own (`helpers.finished_copy`)."""
    root = tmp_path_factory.mktemp("chain_reference")
    assert run_chain(root / "run", root / "models") == 0
    return {"results": read_results(root / "run"), "workdir": root / "run", "models": root / "models"}
