"""Shared fixtures (the helpers they use live in helpers.py)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
from helpers import run_cli

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
