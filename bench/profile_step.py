"""Where a training step's time goes: TensorFlow's profiler on the step as runs configure it.

Traces a few steps with `tf.profiler.experimental` (the TensorBoard profiler: open
`--logdir` in TensorBoard with the profile plugin for the trace viewer), then sums
the traced TensorFlow kernels by op type and prints the largest
shares of the step's op time.

    python -m bench.profile_step [--precision=auto] [--jit_compile] [--nodeterministic]
        [--steps=5] [--logdir=/tmp/krefinery-profile]
"""

from __future__ import annotations

import argparse
import collections
import pathlib

import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from bench.common import BATCH, describe, machine, report, run_trainer
from bench.train_step import batches, step_config


def op_times(logdir: pathlib.Path) -> collections.Counter:
    """Microseconds per op type, from the newest trace's host plane.

    TensorFlow's executor threads (`tf_Compute/...` lines) record each kernel as an
    event named `scope/name:OpType`; two of them run at once on two cores, so the
    total can exceed the wall time.
    """
    (path, *_) = sorted(logdir.rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime, reverse=True)
    space = xplane_pb2.XSpace.FromString(path.read_bytes())
    totals: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                scope, _, op_type = name.rpartition(":")
                if scope and op_type and "::" not in name:  # Not the executor's own events.
                    totals[op_type] += event.duration_ps / 1e6
    return totals


def main(precision: str, jit: bool | None, deterministic: bool | None, steps: int, logdir: str) -> None:
    print(f"# Profile of the training step: ResNet-20, batch {BATCH}; {machine()}")
    trainer, runtime = run_trainer(step_config(precision, jit, deterministic), steps)
    data, _ = batches(steps)
    trainer.fit(data.take(2), verbose=0)
    folder = pathlib.Path(logdir)
    tf.profiler.experimental.start(str(folder))
    trainer.fit(data, shuffle=False, verbose=0)
    tf.profiler.experimental.stop()
    totals = op_times(folder)
    whole = sum(totals.values()) or 1.0
    print(f"op time {whole / steps / 1000:.1f} ms/step over {len(totals)} op types")
    rows = [
        (name, f"{micros / steps / 1000:8.1f} ms/step  {100 * micros / whole:5.1f}%")
        for name, micros in totals.most_common(15)
    ]
    report(f"{describe(runtime)}: op time by op type over {steps} steps (trace in {folder})", rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--logdir", default="/tmp/krefinery-profile")
    args = parser.parse_args()
    main(args.precision, args.jit_compile, args.deterministic, args.steps, args.logdir)
