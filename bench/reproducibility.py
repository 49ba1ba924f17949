"""Whether a run is reproducible without op determinism: the same run twice, weights compared.

Each setting runs the same small digits chain (`python run.py`, ResNet-8, 2 generations
of 2 epochs, batch 32) twice, each in a fresh process as users run it, and compares
the last generation's weights bit for bit; it also says whether different settings
produced the same weights as the deterministic float32 run.

    python -m bench.reproducibility [--settings=float32,float32 nodet,...]
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile

import h5py
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN = ("--depth=8", "--epochs=2", "--generations=2", "--batch_size=32", "--warmup_epochs=0", "--verbose=0")
SETTINGS = {
    "float32": ("--precision=float32", "--nojit_compile", "--deterministic"),
    "float32 nodet": ("--precision=float32", "--nojit_compile", "--nodeterministic"),
    "float32 XLA": ("--precision=float32", "--jit_compile", "--nodeterministic"),
    "bf16": ("--precision=mixed_bfloat16", "--nojit_compile", "--deterministic"),
    "bf16 nodet": ("--precision=mixed_bfloat16", "--nojit_compile", "--nodeterministic"),
    "bf16 XLA": ("--precision=mixed_bfloat16", "--jit_compile", "--nodeterministic"),
}


def weights(path: pathlib.Path) -> list[np.ndarray]:
    arrays: list[np.ndarray] = []
    with h5py.File(path) as h5:
        h5.visititems(lambda _, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def run_once(flags: tuple[str, ...], folder: pathlib.Path) -> list[np.ndarray]:
    subprocess.run(
        [sys.executable, "run.py", *RUN, *flags, f"--workdir={folder / 'run'}", f"--export_dir={folder / 'models'}"],
        cwd=ROOT, check=True, capture_output=True,
    )
    return weights(folder / "run" / "gen_2.weights.h5")


def identical(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


def main(settings: str = "all") -> dict[str, bool]:
    names = list(SETTINGS) if settings == "all" else settings.split(",")
    print(f"# Reproducibility: each setting's run twice, generation-2 weights compared; run.py {' '.join(RUN)}")
    firsts, same = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            runs = [run_once(SETTINGS[name], pathlib.Path(tmp) / f"{name}-{i}") for i in range(2)]
            firsts[name] = runs[0]
            same[name] = identical(*runs)
            reference = firsts.get(names[0])
            print(
                f"  {name:14s} two runs bit-identical: {same[name]}; "
                f"same weights as '{names[0]}': {identical(runs[0], reference)}",
                flush=True,
            )
    return same


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="all", help=f"Comma-separated: {', '.join(SETTINGS)}.")
    main(parser.parse_args().settings)
