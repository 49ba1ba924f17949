"""Benchmark 6: peak memory (RSS) of a refinery run on SVHN-sized data.

A child process per size runs the real pieces on synthetic 32x32x3 images generated on
the fly (as a TFDS dataset is read from disk): the cached splits, the label table, two
generations of training with the relabel pass over the whole training set between them.
Training is cut to a few steps per generation since per-step memory does not grow with
the data; the cache and the relabel pass see every image. Targets: 2 GB for SVHN's
73,257 train images, 4 GB with the 531,131 extra (604,388 in all).

    python -m bench.memory [--sizes=73257,604388]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from bench.common import machine, report

SVHN_TEST = 26_032
TARGET_GB = {73_257: 2.0, 604_388: 4.0}


def child(images: int) -> None:
    from bench.common import Refinery, synthetic_source

    start = time.perf_counter()
    run = Refinery(synthetic_source(images, SVHN_TEST), depth=8, val_fraction=0.1, generations=2)
    for _ in range(2):
        run.train(epochs=1, steps=20)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"images": images, "peak_gib": peak_kb / 2**20, "seconds": time.perf_counter() - start}))


def measure(images: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", f"--child={images}"], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"the {images}-image run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(sizes: tuple[int, ...] = (73_257, 604_388)) -> list[dict]:
    print(f"# Peak RSS of a refinery run (ResNet-8, 2 generations); {machine()}")
    results = [measure(n) for n in sizes]
    report(
        "peak resident memory",
        [
            (
                f"{r['images']:,} train images",
                f"{r['peak_gib']:.2f} GiB (target {TARGET_GB.get(r['images'], float('nan')):.0f} GB), "
                f"{r['seconds']:.0f} s",
            )
            for r in results
        ],
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="73257,604388")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
    else:
        main(tuple(int(n) for n in args.sizes.split(",")))
