import os

import keras
import pytest
import tensorflow as tf
from helpers import refusal

from krefinery.config import Config
from krefinery.errors import UserError
from krefinery.runtime import device

# /proc/cpuinfo flags of the machines bench/RESULTS.md measured (abridged).
EPYC_AVX2 = {"sse4_2", "avx", "avx2", "fma", "f16c"}
XEON_AVX512_BF16 = EPYC_AVX2 | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16"}
XEON_AMX = XEON_AVX512_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}


@pytest.fixture
def cpu(monkeypatch):
    """Pretends to be a CPU-only machine with the given /proc/cpuinfo flags."""

    def pretend(flags: set[str]) -> None:
        monkeypatch.setattr(device, "cpu_flags", lambda: flags)
        monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
        device.machine_kind.cache_clear()

    yield pretend
    device.machine_kind.cache_clear()


@pytest.fixture
def determinism():
    """Restores this process's op determinism after a test that switches it."""
    before = device.determinism_enabled()
    yield
    device.apply_determinism(before)


@pytest.mark.parametrize(
    "flags, kind",
    [(EPYC_AVX2, "cpu-avx2"), (XEON_AVX512_BF16, "cpu-bf16"), (XEON_AMX, "cpu-bf16"), (set(), "cpu-avx2")],
)
def test_machine_kind_follows_the_cpu_flags(cpu, flags, kind):
    cpu(flags)
    assert device.machine_kind() == kind


@pytest.mark.parametrize("flags", [EPYC_AVX2, XEON_AVX512_BF16, XEON_AMX])
def test_auto_on_cpus_is_the_fastest_measured_reproducible_setting(cpu, flags):
    # bench/RESULTS.md: float32 without XLA was fastest on both CPU kinds measured, and
    # op determinism cost nothing measurable there.
    cpu(flags)
    assert device.resolve_runtime("auto", None, None) == device.Runtime(
        precision="float32", jit_compile=False, deterministic=True
    )


@pytest.mark.parametrize("flags", [EPYC_AVX2, XEON_AVX512_BF16])
def test_asking_for_xla_turns_determinism_off_unless_asked_for(cpu, flags):
    cpu(flags)
    assert device.resolve_runtime("auto", True, None) == device.Runtime("float32", True, False)
    assert device.resolve_runtime("auto", None, False) == device.Runtime("float32", False, False)
    assert device.resolve_runtime("auto", False, True) == device.Runtime("float32", False, True)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("flags", [EPYC_AVX2, XEON_AMX])
def test_explicit_settings_are_kept(cpu, flags, precision):
    cpu(flags)
    assert device.resolve_runtime(precision, False, False) == device.Runtime(precision, False, False)
    assert device.resolve_runtime(precision, True, False) == device.Runtime(precision, True, False)


def test_xla_and_determinism_together_are_a_user_error():
    with pytest.raises(UserError, match="--jit_compile and --deterministic cannot both be on"):
        Config(jit_compile=True, deterministic=True)


def test_the_flag_conflict_is_one_line_and_exit_2(capsys):
    assert refusal(capsys, "--jit_compile", "--deterministic").startswith("error: --jit_compile and --deterministic")


def test_keras_compiles_without_xla_under_op_determinism(determinism):
    """Why the rules never pair them: Keras silently drops XLA under op determinism."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    device.apply_determinism(True)
    assert device.determinism_enabled()
    with pytest.warns(UserWarning, match="jit_compile"):
        model.compile("sgd", "mse", jit_compile=True)
    assert model.jit_compile is False
    device.apply_determinism(False)
    assert not device.determinism_enabled()
    model.compile("sgd", "mse", jit_compile=True)
    assert model.jit_compile is True


@pytest.mark.parametrize("jit_compile", [True, None])
def test_a_run_compiles_what_it_resolved(determinism, jit_compile):
    """results.json must not say XLA where Keras quietly trained without it."""
    from krefinery.chain.experiment import prepare_experiment

    config = Config(depth=8, epochs=1, warmup_epochs=0, precision="float32", jit_compile=jit_compile, verbose=0)
    runtime = device.resolve_runtime(config.precision, config.jit_compile, config.deterministic)
    experiment = prepare_experiment(config)
    assert experiment.trainer_for(1).jit_compile is runtime.jit_compile
    assert device.determinism_enabled() is runtime.deterministic
    if jit_compile:
        assert runtime == device.Runtime("float32", jit_compile=True, deterministic=False)


def test_unknown_precision_is_a_user_error():
    with pytest.raises(UserError, match="--precision=half must be one of auto, float32"):
        Config(precision="half")


def test_tensorflows_start_up_notices_are_kept_off_the_console_and_nothing_else(capfd):
    """What TensorFlow's C++ code writes to fd 2 as it loads on a machine without a GPU is
    dropped; every other line written to fd 2 meanwhile comes out, in order."""
    from krefinery.runtime import console

    with console.startup_notices_hidden():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1.2 1 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n")
        os.write(2, b"a line of C++\n")
        os.write(2, b"E0000 00:00:1.3 1 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n")
        os.write(2, b"another line\n")
    assert capfd.readouterr().err == "a line of C++\nanother line\n"
    with console.startup_notices_hidden(enabled=False):  # TF_CPP_MIN_LOG_LEVEL=0 or 1.
        os.write(2, b"E0000 failed call to cuInit\n")
    assert capfd.readouterr().err == "E0000 failed call to cuInit\n"
