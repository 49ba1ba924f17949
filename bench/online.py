"""Benchmark 4: online relabelling's step time vs offline's.

Online, the frozen previous generation labels each augmented batch: one extra forward
pass per step. Target: at most 1.4x the offline step time.

    python -m bench.online [--steps=20] [--rounds=3]
"""

from __future__ import annotations

import argparse

from bench.common import (
    BATCH,
    Refinery,
    alternate,
    machine,
    rate,
    report,
    synthetic_source,
)


def main(steps: int = 20, rounds: int = 3) -> float:
    print(f"# Online vs offline relabelling step: ResNet-20, batch {BATCH}; {machine()}")
    source = synthetic_source(steps * BATCH)
    offline = Refinery(source, val_fraction=0.01)
    online = Refinery(source, val_fraction=0.01, online=True)
    online.relabel()  # Generation 2 onwards: the teacher labels every batch.
    images = offline.splits.num_train
    for run in (offline, online):
        run.trainer.fit(run.train_ds.take(2), verbose=0)
    rates = alternate(
        {
            "offline": lambda: rate(lambda: offline.trainer.fit(offline.train_ds, verbose=0), images),
            "online": lambda: rate(lambda: online.trainer.fit(online.train_ds, verbose=0), images),
        },
        rounds,
    )
    ratio = rates["offline"] / rates["online"]
    report(
        f"images/s, median of {rounds} alternating rounds of {steps} steps",
        [
            ("offline step", f"{rates['offline']:6.1f} img/s"),
            ("online step", f"{rates['online']:6.1f} img/s"),
            ("online step time / offline", f"{ratio:.2f}x (target <= 1.4x)"),
        ],
    )
    return ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.steps, args.rounds)
