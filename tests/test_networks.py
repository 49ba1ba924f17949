"""The ImageNet-style networks (`--arch`): their shapes against the published ones, and a
MobileNet refined by a ResNet-18 at 64x64, run through run.py, killed and resumed,
exported and served, and on JAX with online relabelling."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import (
    RELABEL_FIGURES,
    comparable_generation,
    copy_stored,
    read_results,
    run_cli,
    run_forked,
    serve,
    trained_generations,
    write_images,
)
from test_backends import run_on_backend

from krefinery import faults
from krefinery.config import Architecture, Config
from krefinery.core.networks import build_network, check_input_shape
from krefinery.errors import UserError
from krefinery.outputs import report


def trainable(model: keras.Model) -> int:
    return report.trainable_parameters(model)


# torchvision's ResNet-18/34/50 (1000 classes) and keras.applications' MobileNet v1 (alpha
# 1.0 and 0.25, trainable weights): the networks the paper's table names.
PUBLISHED = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "mobilenet": 4_231_976, "mobilenet_0.25": 470_072}


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_parameter_counts_are_the_published_ones(arch):
    model = build_network(Architecture.of(arch, 20, 1, 1), (32, 32, 3), 1000)
    assert trainable(model) == PUBLISHED[arch]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_0.5"])
@pytest.mark.parametrize("version", [1, 2])
def test_the_stem_and_stages_halve_64_pixels_to_2_in_every_precision(arch, version):
    """The last stage sees 64 / 32 = 2 pixels a side; the logits are float32 and finite
    under mixed_bfloat16 too (a MobileNet has one version: its `of` ignores it)."""
    architecture = Architecture.of(arch, 20, 1, version)
    model = build_network(architecture, (64, 64, 3), 7, precision="mixed_bfloat16")
    (pool,) = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    assert tuple(pool.input.shape[1:3]) == (2, 2)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    logits = model(images, training=True)
    assert logits.shape == (2, 7) and logits.dtype == "float32" and np.all(np.isfinite(logits))


def test_width_multiplies_an_imagenet_resnet_and_the_multiplier_thins_a_mobilenet():
    narrow = trainable(build_network(Architecture.of("resnet18", 20, 1, 1), (32, 32, 3), 10))
    wide = trainable(build_network(Architecture.of("resnet18", 20, 2, 1), (32, 32, 3), 10))
    assert 3.9 < wide / narrow < 4.1
    full = trainable(build_network(Architecture.of("mobilenet", 20, 1, 1), (32, 32, 3), 10))
    half = trainable(build_network(Architecture.of("mobilenet_0.5", 20, 1, 1), (32, 32, 3), 10))
    assert 0.2 < half / full < 0.3  # Pointwise weights, most of them, scale with its square.


def test_images_too_small_for_a_downsampling_stem_are_refused_with_the_fix():
    with pytest.raises(UserError, match=r"images of 31x64 are too small for --arch=resnet18.*at least 32x32"):
        check_input_shape(Architecture.of("resnet18", 20, 1, 1), (31, 64, 3), 10)
    check_input_shape(Architecture.of("resnet18", 20, 1, 1), (32, 32, 3), 10)
    check_input_shape(Architecture.of(Config().arch, 8, 1, 1), (8, 8, 1), 10)


def test_the_default_network_keeps_its_keys_and_records():
    """`arch` is left out where it is the CIFAR ResNet, so runs stored before it existed
    are found again; another network is in every key."""
    from krefinery.chain.store import chain_keys
    from krefinery.config import Refinement

    assert "arch" not in Config().to_dict() and "arch" not in Architecture(20, 1, 1).to_dict()
    runtime = {"backend": "tensorflow"}
    plain = chain_keys(Config(), runtime, Refinement(2))
    assert chain_keys(Config(arch="cifar_resnet"), runtime, Refinement(2)) == plain
    others = {arch: chain_keys(Config(arch=arch), runtime, Refinement(2))[0] for arch in ("resnet18", "mobilenet")}
    assert len({plain[0], *others.values()}) == 3
    # A refinery of its own network changes generation 1's key; one named as the
    # students' network is the same generation 1.
    mobilenet = chain_keys(Config(arch="mobilenet"), runtime, Refinement(2))
    assert chain_keys(Config(arch="mobilenet", refinery_arch="resnet18"), runtime, Refinement(2))[0] != mobilenet[0]
    assert chain_keys(Config(arch="mobilenet", refinery_arch="mobilenet"), runtime, Refinement(2)) == mobilenet


# A MobileNet-0.25 taught by a ResNet-18, offline, on 32x32 images resized to 64x64. On
# three brightness classes the ResNet-18 grows sure enough that its labels at temperature 1
# can round to one-hot (1e-15 nats after 4 epochs on the EPYC with AVX512_BF16), and 3 epochs
# left it at 4 of 7 validation images there: so 4 epochs, and labels at temperature 8.
CHAIN = (
    "--arch=mobilenet_0.25", "--refinery_arch=resnet18", "--image_size=64x64", "--generations=2",
    "--epochs=4", "--temperature=8", "--batch_size=8", "--warmup_epochs=0", "--learning_rate=0.02", "--verbose=0",
    "--precision=float32",
)
REFINERY, STUDENT = Architecture.of("resnet18", 20, 1, 1), Architecture.of("mobilenet_0.25", 20, 1, 1)


def folder(root: Path) -> Path:
    write_images(root / "train", {"dark": 24, "mid": 24, "light": 24}, size=(32, 32))
    return root


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """CHAIN run once, never interrupted."""
    root = tmp_path_factory.mktemp("networks")
    data = folder(root / "data")
    args = (*CHAIN, f"--dataset=folder:{data}")
    run_cli(*args, f"--workdir={root / 'run'}", f"--export_dir={root / 'models'}")
    return {"args": args, "workdir": root / "run", "results": read_results(root / "run")}


def test_a_resnet18_refinery_labels_a_mobilenet_and_the_table_counts_their_parameters(chain):
    results = chain["results"]
    assert [g["architecture"] for g in results["generations"]] == [REFINERY.to_dict(), STUDENT.to_dict()]
    assert [g["parameters"] for g in results["generations"]] == [11_178_051, 213_843]
    student = results["generations"][1]
    # The refinery's soft labels, not one-hot ground truth (whose entropy is exactly 0).
    assert student["train_label_entropy"] > 0
    assert results["generations"][0]["train_label_entropy"] == 0
    assert results["generations"][0]["val_accuracy"] == 1.0  # Three brightness classes.
    lines = report.format_table(results).splitlines()
    assert lines[0].split()[-1] == "model"
    assert lines[2].endswith("ResNet-18 v1 (ImageNet) (11.18M parameters)")
    assert lines[3].endswith("MobileNet-0.25 (0.21M parameters)")


def test_the_export_serves_what_the_kept_weights_compute(chain):
    results, workdir = chain["results"], chain["workdir"]
    best = results["best_generation"]
    model = build_network(REFINERY if best == 1 else STUDENT, (64, 64, 3), 3)
    model.load_weights(workdir / f"gen_{best}.weights.h5")
    images = np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3)).astype(np.uint8)
    expected = np.asarray(keras.ops.softmax(model(images, training=False)))
    np.testing.assert_allclose(serve(results["exports"]["best"], images)["probabilities"], expected, atol=1e-5)


def test_killed_in_generation_2_the_same_command_finishes_the_same_run(chain, tmp_path):
    """The refinery stored (as an earlier run left it), the MobileNet killed mid-epoch."""
    workdir = tmp_path / "run"
    args = (*chain["args"], f"--workdir={workdir}", f"--export_dir={tmp_path / 'models'}")
    copy_stored(chain["results"], workdir, 1)
    killed = run_forked(*args, cwd=tmp_path, env={faults.KILL_AT: "gen2.epoch2.batch2"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    (state,) = [json.loads(p.read_text()) for p in (workdir / "generations").glob("*.ckpt.json")]
    assert state["epoch"] == 1
    run_cli(*args)
    resumed, reference = read_results(workdir), chain["results"]
    assert [comparable_generation(g, *RELABEL_FIGURES) for g in resumed["generations"]] == [
        comparable_generation(g, *RELABEL_FIGURES) for g in reference["generations"]
    ]
    assert [entry["generation"] for entry in trained_generations(workdir)] == [2]


def test_on_jax_a_resnet18_teaches_a_mobilenet_online(tmp_path):
    data = folder(tmp_path / "data")
    args = (*CHAIN, "--epochs=1", "--relabel=online", "--input=memory", f"--dataset=folder:{data}")
    result = run_on_backend("jax", *args, f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'models'}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(tmp_path / "run")
    assert results["runtime"]["backend"] == "jax"
    assert [g["architecture"] for g in results["generations"]] == [REFINERY.to_dict(), STUDENT.to_dict()]
    assert results["generations"][1]["train_label_entropy"] > 0
    assert Path(results["exports"]["best"], "saved_model.pb").is_file()
