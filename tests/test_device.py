import json
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


def test_the_precision_probe_keeps_the_faster_and_reads_it_back(tmp_path):
    """`probe.choose_precision` with steps of known cost: the faster wins, the figures go
    to the cache, and the next call reads them back without building a step; a damaged
    cache is measured again, never trusted."""
    import time

    from krefinery.runtime import probe

    cache = tmp_path / "cache" / probe.CACHE_FILE
    cost = {"float32": 0.010, "mixed_bfloat16": 0.001}
    built = []

    def make_step(precision):
        built.append(precision)
        return lambda: time.sleep(cost[precision])

    model = {"depth": 8, "batch_size": 32}
    first = probe.choose_precision(model, probe.CANDIDATES, make_step, 32, cache)
    assert first.precision == "mixed_bfloat16" and not first.cached and built == list(probe.CANDIDATES)
    rates = first.images_per_second
    assert rates["mixed_bfloat16"] > 2 * rates["float32"]  # 10x less sleep a step.
    assert "measured now" in first.line(cache)
    again = probe.choose_precision(model, probe.CANDIDATES, make_step, 32, cache)
    assert again == probe.Choice("mixed_bfloat16", rates, cached=True) and len(built) == 2
    # Another model shape is another entry.
    cost = {"float32": 0.001, "mixed_bfloat16": 0.010}
    other = probe.choose_precision({**model, "depth": 14}, probe.CANDIDATES, make_step, 32, cache)
    assert other.precision == "float32" and len(built) == 4
    cache.write_text('{"cut')
    assert not probe.choose_precision(model, probe.CANDIDATES, make_step, 32, cache).cached


def test_runs_started_together_measure_once_and_agree(tmp_path):
    """Two choosers at once (a search's workers on one machine; threads here, each with its
    own lock handle, as processes have): one measures, the other waits and reads it back."""
    import threading
    import time

    from krefinery.runtime import probe

    cache = tmp_path / probe.CACHE_FILE
    built = []

    def make_step(precision):
        built.append(precision)
        return lambda: time.sleep(0.010 if precision == "float32" else 0.001)

    choices = []
    threads = [
        threading.Thread(target=lambda: choices.append(probe.choose_precision({"depth": 8}, probe.CANDIDATES, make_step, 32, cache)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 2  # One measurement: a step per candidate.
    assert sorted(choice.cached for choice in choices) == [False, True]
    assert choices[0].precision == choices[1].precision == "mixed_bfloat16"


def test_auto_precision_is_measured_once_and_recorded_where_bfloat16_has_hardware(monkeypatch, tmp_path, capsys):
    """A run of `--precision=auto` on a machine with bfloat16 hardware (pretended here; the
    steps really run) times the candidates on its model once, says so in one line and
    records the figures in results.json's runtime; the next run (its experiment, built as
    a run builds it) reads them back and resolves to the same precision."""
    from helpers import read_results, run_cli

    import run
    from krefinery.chain import experiment
    from krefinery.runtime import probe

    monkeypatch.setenv(probe.PROBE_ENV, "1")
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(experiment, "machine_kind", lambda: "cpu-bf16")
    tiny = ("--depth=8", "--epochs=1", "--generations=1", "--batch_size=32", "--warmup_epochs=0", "--verbose=1")

    def probe_line(how: str) -> None:
        (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--precision=auto: ")]
        assert how in line and str(tmp_path / "cache" / probe.CACHE_FILE) in line

    def prepared(*flags: str) -> experiment.Experiment:
        run.FLAGS.unparse_flags()
        run.parse_flags(["run.py", *tiny, *flags])
        return experiment.prepare_experiment(run.config_from_flags())

    capsys.readouterr()
    run_cli(*tiny, f"--workdir={tmp_path / 'run'}")
    probe_line("measured now")
    runtime = read_results(tmp_path / "run")["runtime"]
    measured = runtime.pop("precision_measured")
    assert set(measured) == set(probe.CANDIDATES)
    assert runtime["precision"] == max(measured, key=measured.get)
    cached = json.loads((tmp_path / "cache" / probe.CACHE_FILE).read_text())
    assert [entry["images_per_second"] for entry in cached.values()] == [measured]

    again = prepared()
    probe_line("measured earlier here")
    assert again.precision_measured == measured and again.runtime == runtime

    # An explicit precision is the user's: nothing measured.
    explicit = prepared("--precision=float32")
    assert "--precision=auto" not in capsys.readouterr().out
    assert explicit.precision_measured is None and explicit.runtime["precision"] == "float32"


def test_onednn_is_turned_on_for_x86_cpus_unless_the_user_chose(monkeypatch):
    """TensorFlow leaves its oneDNN kernels off on AVX2-only CPUs, where they made the step
    1.81x faster (bench/RESULTS.md, cpu-avx2 §12); a user's TF_ENABLE_ONEDNN_OPTS stands,
    and other architectures are left to TensorFlow."""
    monkeypatch.delenv(device.ONEDNN_ENV, raising=False)
    monkeypatch.setattr(device.platform, "machine", lambda: "x86_64")
    device.prefer_onednn()
    assert os.environ[device.ONEDNN_ENV] == "1"
    monkeypatch.setenv(device.ONEDNN_ENV, "0")
    device.prefer_onednn()
    assert os.environ[device.ONEDNN_ENV] == "0"
    monkeypatch.delenv(device.ONEDNN_ENV)
    monkeypatch.setattr(device.platform, "machine", lambda: "aarch64")
    device.prefer_onednn()
    assert device.ONEDNN_ENV not in os.environ
