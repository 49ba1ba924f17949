"""Per-device defaults for numeric precision and XLA, chosen from bench/ measurements.

`--precision=auto` and an unset `--jit_compile` resolve here, once per run, and the
resolved values go into `results.json`. The rules follow bench/RESULTS.md:

- NVIDIA GPUs of compute capability >= 8.0 (A100, H100, H200) have bfloat16 tensor
  cores: `mixed_bfloat16`, with XLA (Keras also turns XLA on by default on GPUs).
- CPUs with native bfloat16 (AVX512_BF16 or AMX) get `mixed_bfloat16` with XLA, since
  oneDNN's bfloat16 kernels need them. Other CPUs (AVX2 only, like the 2-core CI
  machine) emulate bfloat16 and ran no faster with it or with XLA: float32, no XLA.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _fast_bfloat16() -> bool:
    """Whether this machine runs bfloat16 natively (a recent GPU, or a bf16-capable CPU)."""
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and capability >= (8, 0):
            return True
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(requested: str) -> str:
    """`auto` -> the fastest Keras dtype policy here; any explicit policy is kept."""
    if requested != "auto":
        return requested
    return "mixed_bfloat16" if _fast_bfloat16() else "float32"


def resolve_jit_compile(requested: bool | None) -> bool:
    """`None` (the flag left unset) -> XLA where it paid off in the benchmarks.

    On JAX every step is XLA-compiled (without it Keras runs JAX op by op); on PyTorch
    Keras runs eagerly, as its own default is (`torch.compile` if asked)."""
    if requested is not None:
        return requested
    backend = keras.backend.backend()
    if backend != "tensorflow":
        return backend == "jax"
    return _fast_bfloat16()
