"""Benchmark: the training step of the ImageNet-style networks (`--arch`) against PyTorch.

ResNet-18 and MobileNet v1 at 64x64 and 224x224 (ten classes, random uint8 images), our
step as a run sets it up (`bench.common.run_trainer`: `auto` precision, XLA and
determinism resolved for this machine) beside torchvision's ResNet-18 and the same
MobileNet v1 in PyTorch (`bench.torch_networks`; float32, and bfloat16 autocast, each with
PyTorch's default threads), alternating in one process. Reports medians and our step
over the best PyTorch contender.

    python -m bench.networks [--archs=resnet18,mobilenet] [--sizes=64,224] [--rounds=3]
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import (
    CLASSES,
    alternate,
    batched,
    describe,
    machine,
    rate,
    report,
    run_trainer,
    synthetic_images,
)
from krefinery.config import Config

# (batch, timed steps) per image side: about the same seconds per round at each size.
SIZES = {64: (64, 6), 224: (16, 3)}
TORCH = ("float32", "bfloat16")


def main(archs: str = "resnet18,mobilenet", sizes: str = "64,224", rounds: int = 3) -> dict[str, float]:
    try:
        from bench import torch_networks
    except ImportError:
        torch_networks = None
    print(f"# ImageNet-style networks' training step vs PyTorch; {machine()}")
    contenders, labels, pairs = {}, {}, []
    for side in (int(s) for s in sizes.split(",")):
        batch, steps = SIZES[side]
        images, classes = synthetic_images(batch * (steps + 1), shape=(side, side, 3))
        targets = np.eye(CLASSES, dtype=np.float32)[classes]
        data = batched({"image": images, "label": classes, "target": targets}, batch)
        for arch in archs.split(","):
            config = Config(arch=arch, batch_size=batch, epochs=10, lr_schedule="step", warmup_epochs=0, weight_decay=1e-4)
            trainer, runtime = run_trainer(config, steps + 1, shape=(side, side, 3))
            trainer.fit(data.take(1), verbose=0)  # Trace (and compile) outside the timing.
            name = f"{arch} {side}px ours"
            labels[name] = describe(runtime)
            contenders[name] = lambda t=trainer, d=data.skip(1), n=batch * steps: rate(lambda: t.fit(d, shuffle=False, verbose=0), n)
            theirs = []
            for precision in TORCH if torch_networks else ():
                rival = f"{arch} {side}px torch {precision}"
                contenders[rival] = lambda a=arch, p=precision, b=batch, s=steps, i=images, t=targets: (
                    torch_networks.train_rate(a, i, t, b, s, p)
                )
                theirs.append(rival)
            pairs.append((name, theirs))
    medians = alternate(contenders, rounds)
    rows = []
    for name, theirs in pairs:
        line = f"{medians[name]:7.1f} img/s   compiled as: {labels[name]}"
        if theirs:
            best = max(theirs, key=medians.get)
            line += f"   / best PyTorch ({best.rsplit(' ', 1)[1]}, {medians[best]:.1f}) {medians[name] / medians[best]:.2f}x"
        rows.append((name, line))
        rows += [(rival, f"{medians[rival]:7.1f} img/s") for rival in theirs]
    if torch_networks is None:
        rows.append(("PyTorch", "not installed: `pip install torch torchvision` to compare"))
    report(f"images/s, median of {rounds} alternating rounds", rows)
    return medians


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,mobilenet")
    parser.add_argument("--sizes", default="64,224")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.archs, args.sizes, args.rounds)
