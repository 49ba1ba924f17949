"""test_distribute's runs on two devices, in a fresh process: logical devices must be set
up before TensorFlow or JAX starts.

    KERAS_BACKEND=tensorflow|jax python tests/distributed_runs.py DATASET_DIR OUT_DIR

Under TensorFlow the CPU is split into 2 logical devices (MirroredStrategy); under JAX
into 2 host devices (DataParallel). Runs chains through run.py's own entry point, into
OUT_DIR/<name>/ and OUT_DIR/<name>-models/, and writes OUT_DIR/report.json: each one's
exit code, stderr and seconds (see test_distribute for which chains).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

if BACKEND == "tensorflow":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
from krefinery import faults  # noqa: E402

TWO = "mirrored" if BACKEND == "tensorflow" else "data_parallel"


def chain(name: str, out: Path, *flags: str, env: dict | None = None) -> dict:
    """`python run.py FLAGS` in this process; its exit code and stderr."""
    stderr = io.StringIO()
    old = dict(os.environ)
    os.environ.update(env or {})
    code = 0
    start = time.perf_counter()
    try:
        run.FLAGS.unparse_flags()
        with contextlib.redirect_stderr(stderr):
            run.main(run.FLAGS(["run.py", *flags, f"--workdir={out / name}", f"--export_dir={out / (name + '-models')}"]))
    except SystemExit as exit_:
        code = exit_.code
    except Interrupted:
        code = "interrupted"
    finally:
        os.environ.clear()
        os.environ.update(old)
    return {"code": code, "stderr": stderr.getvalue(), "seconds": round(time.perf_counter() - start, 1)}


class Interrupted(Exception):
    """Stands in for a kill at a fault point (a kill -9 would end this whole process)."""


def interrupt_at(point: str) -> None:
    if os.environ.get(faults.KILL_AT) == point:
        raise Interrupted(point)


def main() -> None:
    data, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    dataset = f"--dataset=folder:{data}"
    report = {}
    tiny = (dataset, "--depth=8", "--epochs=2", "--generations=2", "--batch_size=16",
            "--warmup_epochs=0", "--verbose=0", "--precision=float32")
    if BACKEND == "tensorflow":
        report["none"] = chain("none", out, *tiny, "--distribute=none")
        # Interrupted in generation 2's second epoch, then resumed by the same command.
        faults.reached = interrupt_at
        report["interrupted"] = chain(TWO, out, *tiny, f"--distribute={TWO}", env={faults.KILL_AT: "gen2.epoch2.batch1"})
        report[TWO] = chain(TWO, out, *tiny, f"--distribute={TWO}")
        report["odd_batch"] = chain("odd_batch", out, *tiny, f"--distribute={TWO}", "--batch_size=15")
    else:
        # 20 a batch: 5 whole batches an epoch, so XLA compiles each step for one batch
        # shape, not again for a last, smaller batch (tf.distribute's case above).
        online = (*tiny, "--relabel=online", "--epochs=1", "--batch_size=20")
        report["none"] = chain("none", out, *online, "--distribute=none")
        report[TWO] = chain(TWO, out, *online, f"--distribute={TWO}")
        report["mirrored_on_jax"] = chain("mirrored_on_jax", out, *tiny, "--distribute=mirrored")
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
