"""Per-machine defaults for precision, XLA and op determinism, chosen from bench/ measurements.

`--precision=auto`, an unset `--jit_compile` and an unset `--deterministic` resolve here,
once per run (`resolve_runtime`), and `apply_determinism` puts the choice into effect
before the trainer is compiled. The rules follow bench/RESULTS.md, per machine kind:

- `cpu-avx2` (no native bfloat16; measured on a 2-core AMD EPYC): float32 without XLA
  was fastest; XLA cost 8%, bfloat16 (emulated) 26-55%.
- `cpu-bf16` (AVX512_BF16 or AMX; measured on a 2-core Intel Xeon with AVX512_BF16 whose
  hypervisor hides AMX): float32 without XLA was fastest again, about 1.6x bfloat16
  and 2-3x float32 with XLA: its bfloat16 convolutions were no faster than float32's,
  and Keras adds float32 casts around every batch normalization. The issue's readings
  on a Xeon with AMX (without op determinism) rank them the same.
- `gpu-bf16` (NVIDIA compute capability >= 8.0) and `gpu`: not measured by this
  project yet; mixed_bfloat16 where tensor cores have it, kept deterministic.

On the kinds with bfloat16 hardware (`BF16_KINDS`) a run measures `--precision=auto`
instead (`krefinery/runtime/probe.py`); the table is its fallback where the probe is off.

Op determinism (`tf.config.experimental.enable_op_determinism`) is on unless XLA is
asked for: on the Xeon it cost nothing measurable and changed no bit of the weights
(runs were bit-identical with it off too; the EPYC was not measured with it), and on
GPUs it is what makes runs repeatable. Under it Keras
turns `jit_compile=True` off, so a run gets one or the other; asking for both is an
error (see `config.Config`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import platform
import sys

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# The kinds with bfloat16 hardware: where `--precision=auto` is measured (`runtime.probe`).
BF16_KINDS = ("cpu-bf16", "gpu-bf16")
# The most uint8 training images `--input=auto` holds on an accelerator (a quarter of the
# smallest GPU the project targets, 16 GB, leaving room for the model and activations).
MEMORY_BUDGET = 4 * 2**30
KINDS = ("cpu-avx2", "cpu-bf16", "gpu", "gpu-bf16")


@dataclasses.dataclass(frozen=True)
class Defaults:
    """What `auto`/unset resolve to on one machine kind."""

    precision: str
    jit_compile: bool
    deterministic: bool


# From bench/RESULTS.md; the GPU rows are unmeasured and keep runs reproducible.
DEFAULTS = {
    "cpu-avx2": Defaults("float32", jit_compile=False, deterministic=True),
    "cpu-bf16": Defaults("float32", jit_compile=False, deterministic=True),
    "gpu": Defaults("float32", jit_compile=False, deterministic=True),
    "gpu-bf16": Defaults("mixed_bfloat16", jit_compile=False, deterministic=True),
}


@dataclasses.dataclass(frozen=True)
class Runtime:
    """The settings a run uses; `dataclasses.asdict` of it, with `jit_compile` read back
    from the trainer after `compile`, is `results.json`'s "runtime"."""

    precision: str
    jit_compile: bool
    deterministic: bool


# TensorFlow's switch for its oneDNN kernels (read once, as TensorFlow loads).
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def prefer_onednn() -> None:
    """Turns TensorFlow's oneDNN kernels on for x86-64 CPUs, unless the user has set
    ONEDNN_ENV. Call it before TensorFlow loads; afterwards it changes nothing.

    TensorFlow decides by itself per CPU: on the Xeon with AVX512_BF16 it had them on
    (bench/RESULTS.md's profile there shows oneDNN's `_MklNative` ops), on the AVX2-only
    EPYC it left them off and ran Eigen's convolutions; there the training step ran 1.81x
    faster with them on (cpu-avx2 §12), and results differ in rounding only, as between
    machines."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault(ONEDNN_ENV, "1")


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return set(next((line for line in cpuinfo if line.startswith("flags")), "").split())
    except OSError:
        return set()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` says."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        line = ""
    return line.partition(":")[2].strip() or platform.processor() or platform.machine()


@functools.cache
def machine_kind() -> str:
    """One of KINDS: the kind of device a run here trains on, as the backend sees it."""
    import keras  # Here, not above: run.py reads `tensorflow_installed` before Keras loads.

    capability = _gpu_capability(keras.backend.backend())
    if capability is not None:
        return "gpu-bf16" if capability >= (8, 0) else "gpu"
    return "cpu-bf16" if cpu_flags() & set(BF16_CPU_FLAGS) else "cpu-avx2"


def _gpu_capability(backend: str) -> tuple[int, int] | None:
    """The first GPU's compute capability ((0, 0) if unknown), or None without a GPU.
    Asks the backend in use only: a JAX run need not import TensorFlow for it."""
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if not gpus:
            return None
        major, _, minor = str(getattr(gpus[0], "compute_capability", "0.0")).partition(".")
        return int(major), int(minor or 0)
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        return tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
    if backend == "torch":
        import torch

        return torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
    return None


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported here, without importing it."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except ImportError:
        return False


def resolve_input(requested: str, train_bytes: int) -> str:
    """`--input=auto` -> `memory` (batches made on the device) where TensorFlow is not
    installed, or on an accelerator when the training images (`train_bytes`, uint8)
    fit `MEMORY_BUDGET`; else `tfdata`. On a CPU, tf.data: the in-memory path saves no
    transfer there, and the runs of a CPU keep the batches they always had."""
    if requested != "auto":
        return requested
    if not tensorflow_installed():
        return "memory"
    if machine_kind().startswith("gpu") and train_bytes <= MEMORY_BUDGET:
        return "memory"
    return "tfdata"


def resolve_precision(requested: str) -> str:
    """`auto` -> the fastest measured Keras dtype policy here; an explicit policy is kept."""
    if requested != "auto":
        return requested
    return DEFAULTS[machine_kind()].precision


def resolve_deterministic(requested: bool | None, jit_compile: bool | None = None) -> bool:
    """`None` -> op determinism on, unless XLA was asked for (Keras allows one or the other)."""
    if requested is not None:
        return requested
    if jit_compile:
        return False
    return DEFAULTS[machine_kind()].deterministic


def resolve_jit_compile(requested: bool | None, deterministic: bool | None = None) -> bool:
    """`None` -> XLA where it paid off in the benchmarks, and never under op determinism.

    On JAX every step is XLA-compiled (without it Keras runs JAX op by op, and TensorFlow's
    op determinism does not reach JAX); on PyTorch Keras runs eagerly, its own default."""
    if requested is not None:
        return requested
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        return backend == "jax"
    if deterministic is None:
        deterministic = resolve_deterministic(None)
    return DEFAULTS[machine_kind()].jit_compile and not deterministic


def resolve_runtime(precision: str, jit_compile: bool | None, deterministic: bool | None) -> Runtime:
    """The flags' values (`auto`/None for unset) -> the settings this run uses here."""
    resolved_deterministic = resolve_deterministic(deterministic, jit_compile)
    return Runtime(
        precision=resolve_precision(precision),
        jit_compile=resolve_jit_compile(jit_compile, resolved_deterministic),
        deterministic=resolved_deterministic,
    )


def apply_determinism(enabled: bool) -> None:
    """Turns TensorFlow's op determinism on or off for this process, where TensorFlow is
    in use (its backend, or tf.data): a JAX run on in-memory data has nothing to set.

    Call it before the trainer is compiled: Keras decides at `compile` whether XLA is
    possible (not under op determinism) and tf.data reads the setting when a dataset
    is iterated.
    """
    import keras

    if keras.backend.backend() != "tensorflow" and "tensorflow" not in sys.modules:
        return
    import tensorflow as tf

    if enabled:
        tf.config.experimental.enable_op_determinism()
    elif determinism_enabled():
        _tf_config().disable_op_determinism()


def determinism_enabled() -> bool:
    """Whether op determinism is on in this process now."""
    return bool(_tf_config().is_op_determinism_enabled())


def _tf_config():
    """TensorFlow exports `enable_op_determinism` but neither its inverse nor a getter; a
    process that runs several configurations (tests, searches, benchmarks) needs both.
    Keras's own `model_supports_jit` reads the same module."""
    from tensorflow.python.framework import config

    return config
