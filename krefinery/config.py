"""One settings object for a refinery run, checked once, before any work starts."""

from __future__ import annotations

import dataclasses
import fractions
import json
import math
import re
from typing import Any

from krefinery.errors import UserError

RELABEL_MODES = ("offline", "online")
LR_SCHEDULES = ("cosine", "step")
RESNET_VERSIONS = (1, 2)
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
DISTRIBUTES = ("auto", "none", "mirrored", "multi_worker", "data_parallel")
INPUTS = ("auto", "tfdata", "memory", "stream")
# How training images are cropped: pad and shift by up to 1/8 of the side (CIFAR's), or
# random-resized crops (the Inception crop) of `--crop_area` and `--crop_ratio`.
CROPS = ("translate", "inception")
# An export name is one folder beside others that a server watches: no path, not hidden.
EXPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Where an export keeps its Keras model: `outputs.export` writes it, `--refinery_model` reads
# it. A SavedModel version carries a copy in assets.extra/, which servers leave alone;
# without TensorFlow a version holds that file alone.
KERAS_MODEL = "model.keras"
KERAS_MODEL_BESIDE_SAVEDMODEL = f"assets.extra/{KERAS_MODEL}"
IMAGE_SIZE = re.compile(r"([0-9]+)x([0-9]+)")
MAX_IMAGE_SIDE = 4096
SEED_LIMIT = 2**32  # NumPy and Keras seeds are unsigned 32-bit.

# The role of each Config field, declared once beside it (`_role`); the store's keys,
# the resume check and the records all read it from there (`Config.fields`).
LEARNED = "learned"  # What a generation learns from: in every store key and resume check.
CHAIN = "chain"  # The chain's refinement: in the keys of generations 2.. and the resume check.
RESOLVED = "resolved"  # Resolved per machine: the resolved value is in the keys (the run's
# runtime), the value asked for in the resume check.
STUDY = "study"  # How many chains a study trains: in the resume check only.
OUTPUT = "output"  # Where outputs go and how much is printed: a resumed run may change it.
ROLES = (LEARNED, CHAIN, RESOLVED, STUDY, OUTPUT)


def _role(role: str, default: Any) -> Any:
    """A Config field with its role (one of ROLES) and default."""
    return dataclasses.field(default=default, metadata={"role": role})


# The networks `--arch` and `--refinery_arch` name: the CIFAR-style ResNet, shaped by
# --depth, --width and --resnet_version, and ImageNet-style ones (a stem that downsamples),
# their depth or MobileNet width multiplier in the name, as the paper names them.
CIFAR_RESNET = "cifar_resnet"
IMAGENET_RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50}
MOBILENETS = {"mobilenet": 1.0, "mobilenet_0.75": 0.75, "mobilenet_0.5": 0.5, "mobilenet_0.25": 0.25}
ARCHS = (CIFAR_RESNET, *IMAGENET_RESNETS, *MOBILENETS)
# Generation 1's network where it is a trained model read from a file (`--refinery_model`).
LOADED = "loaded"
CIFAR_DEPTH = 20  # --depth's default: ResNet-20.
MOBILENET_DEPTH = 28  # Its weight layers, counting depthwise and pointwise apart (Howard et al.).

# Generation 1's own architecture; unset (None), each is the student's.
REFINERY_FIELDS = ("refinery_arch", "refinery_depth", "refinery_width", "refinery_version", "refinery_model")
# Fields left out of `Config.to_dict` while at their default: added after runs were
# stored, so that those runs' records, settings and store keys stay what they were.
ADDED_LATER = ("arch", *REFINERY_FIELDS, "crop", "crop_area", "crop_ratio", "crop_center", "flip")
# The share of each side that evaluation's centre crop keeps with --crop=inception:
# torchvision's ImageNet evaluation, a 224 crop of an image resized to 256, keeps 224/256.
CROP_CENTER = 0.875


def check_depth(depth: int, flag: str = "depth") -> int:
    """Returns n, the residual blocks per stage, of a CIFAR-style ResNet of this depth."""
    if depth < 8 or (depth - 2) % 6:
        raise UserError(
            f"--{flag}={depth} is not a CIFAR-style ResNet depth: it must be 6n+2 with "
            "n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)."
        )
    return (depth - 2) // 6


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The shape of one generation's network: what `core.networks.build_network` needs
    besides the data. Made by `of`, so that one network has one value (a MobileNet's
    depth, width and version are fixed)."""

    depth: int
    width: int
    version: int
    arch: str = CIFAR_RESNET

    @classmethod
    def of(cls, arch: str, depth: int, width: int, version: int) -> Architecture:
        """The network `arch` names; `depth` counts for the CIFAR ResNet alone, `width`
        and `version` for the ResNets."""
        if arch in IMAGENET_RESNETS:
            return cls(IMAGENET_RESNETS[arch], width, version, arch)
        if arch in MOBILENETS:
            return cls(MOBILENET_DEPTH, 1, 1, arch)
        return cls(depth, width, version)

    @property
    def multiplier(self) -> float:
        """A MobileNet's width multiplier."""
        return MOBILENETS[self.arch]

    def describe(self) -> str:
        """`ResNet-20 v1`, with `x2` for a wider one, `ResNet-18 v1 (ImageNet)`,
        `MobileNet-0.5`: for tables and logs."""
        if self.arch == LOADED:
            return "loaded model (--refinery_model)"
        if self.arch in MOBILENETS:
            return "MobileNet" if self.multiplier == 1 else f"MobileNet-{self.multiplier:g}"
        wide = f" x{self.width}" if self.width != 1 else ""
        imagenet = " (ImageNet)" if self.arch in IMAGENET_RESNETS else ""
        return f"ResNet-{self.depth}{wide} v{self.version}{imagenet}"

    def to_dict(self) -> dict[str, Any]:
        """The fields, `arch` only where it is not the CIFAR ResNet (as before it existed)."""
        values = dataclasses.asdict(self)
        if self.arch == CIFAR_RESNET:
            del values["arch"]
        return values


@dataclasses.dataclass(frozen=True)
class Crop:
    """How training images are cropped (`data.crops`): `kind` one of CROPS; for
    `inception`, the range of the crop's share of the image's area and of its aspect
    ratio (width / height), and `center`, the share of each side that evaluation's
    centre crop keeps (1: evaluation sees the whole image)."""

    kind: str = "translate"
    area: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    center: float = 1.0


@dataclasses.dataclass(frozen=True)
class Refinement:
    """How a chain refines its labels: its length, and how a trained model's logits
    become the next generation's targets, `alpha * onehot + (1 - alpha) *
    softmax(logits / temperature)`. One value, passed to every piece that needs it."""

    generations: int = 1
    temperature: float = 1.0
    alpha: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "alpha", float(self.alpha))

    def of_length(self, generations: int) -> Refinement:
        """The same refinement over a chain of `generations`."""
        return dataclasses.replace(self, generations=generations)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; `results.json` stores it so a run can be repeated.

    The defaults are the quick offline recipe on scikit-learn's digits; the presets in
    `flags/` hold the full-length recipes for SVHN and CIFAR.
    """

    # Data.
    dataset: str = _role(LEARNED, "digits")
    data_dir: str | None = _role(LEARNED, None)
    svhn_extra: bool = _role(LEARNED, False)
    val_fraction: float = _role(LEARNED, 0.1)
    augment: bool = _role(LEARNED, True)
    # Horizontal flips in training; None: where the dataset's labels survive them
    # (`data.sources.FLIP_SAFE`: photos of things from TFDS; never digits or folders).
    flip: bool | None = _role(LEARNED, None)
    crop: str = _role(LEARNED, "translate")  # One of CROPS; only with --augment.
    crop_area: str = _role(LEARNED, "0.08,1")  # --crop=inception: MIN,MAX share of the area.
    crop_ratio: str = _role(LEARNED, "3/4,4/3")  # --crop=inception: MIN,MAX width / height.
    # --crop=inception: the share of each side that evaluation's centre crop keeps; None
    # resolves to CROP_CENTER there and stays None with --crop=translate. In the keys: the
    # offline relabelling labels this view.
    crop_center: float | None = _role(LEARNED, None)
    skip_bad_images: bool = _role(LEARNED, False)  # folder:PATH only: leave unreadable files out, and say so.
    image_size: str | None = _role(LEARNED, None)  # "HxW" every image is resized to; None: as read (folders: the most common size).
    # Refinery.
    generations: int = _role(CHAIN, 3)
    temperature: float = _role(CHAIN, 1.0)
    alpha: float = _role(CHAIN, 0.0)
    relabel: str = _role(LEARNED, "offline")
    # Model: one of ARCHS; --depth applies to the CIFAR ResNet, --width and
    # --resnet_version to the ResNets.
    arch: str = _role(LEARNED, CIFAR_RESNET)
    depth: int = _role(LEARNED, CIFAR_DEPTH)
    width: int = _role(LEARNED, 1)
    resnet_version: int = _role(LEARNED, 1)
    # The refinery (generation 1), which labels the data for the rest; None: the student's
    # (--arch, --depth, --width, --resnet_version). The paper refines AlexNet with ResNet-50 labels.
    refinery_arch: str | None = _role(LEARNED, None)
    refinery_depth: int | None = _role(LEARNED, None)
    refinery_width: int | None = _role(LEARNED, None)
    refinery_version: int | None = _role(LEARNED, None)
    # A trained model (a `.keras` file, or a version this project exported) that is
    # generation 1 instead: never trained, its labels refine the data for the rest. Its
    # content, not its path, is in the store's keys (`chain.refinery_model.digest`).
    refinery_model: str | None = _role(LEARNED, None)
    # Optimisation (per generation: every generation runs the whole schedule).
    epochs: int = _role(LEARNED, 15)
    batch_size: int = _role(LEARNED, 64)
    learning_rate: float = _role(LEARNED, 0.1)
    lr_schedule: str = _role(LEARNED, "cosine")
    warmup_epochs: int | None = _role(LEARNED, None)  # None: 1, or 0 where it cannot apply (see below).
    momentum: float = _role(LEARNED, 0.9)
    weight_decay: float = _role(LEARNED, 5e-4)
    # Speed and reproducibility: `auto` and None pick per device (see `krefinery.runtime.device`).
    precision: str = _role(RESOLVED, "auto")
    jit_compile: bool | None = _role(RESOLVED, None)
    # What was asked for, in the keys as it always was; the resolved value is in the runtime.
    deterministic: bool | None = _role(LEARNED, None)
    # Devices: `auto` is several accelerators' strategy, or one device (see krefinery.runtime.distribute).
    distribute: str = _role(RESOLVED, "auto")
    # How examples reach the step: tf.data, batches made on the device from arrays
    # (krefinery.data.memory), or tf.data decoding a folder's files or a TFDS dataset's
    # images as it reads them (`stream`); `auto`: see krefinery.runtime.device.resolve_input.
    input: str = _role(RESOLVED, "auto")
    # Bookkeeping.
    seed: int = _role(LEARNED, 0)
    # None: the splits come from `seed` too. A study sets it so that repeats, each with
    # its own training seed, share one split and can be compared pair by pair.
    split_seed: int | None = _role(LEARNED, None)
    # Study (krefinery.commands.study): chains with training seeds seed, seed+1, ...; a control.
    repeats: int = _role(STUDY, 1)
    control: bool = _role(STUDY, False)
    workdir: str | None = _role(OUTPUT, None)
    verbose: int = _role(OUTPUT, 1)
    # Export (TF Serving layout: <export_dir>/<export_name>/<version>/).
    export_dir: str = _role(OUTPUT, "saved_models")
    export_name: str | None = _role(OUTPUT, None)  # None: from the dataset (see export.default_export_name).
    export_all_generations: bool = _role(OUTPUT, False)

    def __post_init__(self) -> None:
        _require(bool(self.dataset.strip()), "--dataset is empty; try --dataset=digits.")
        _require(
            0.0 < self.val_fraction < 1.0,
            f"--val_fraction={self.val_fraction} must be between 0 and 1 (exclusive): "
            "selection needs a validation split carved from train.",
        )
        _require(self.generations >= 1, f"--generations={self.generations} must be >= 1.")
        _require(
            math.isfinite(self.temperature) and self.temperature > 0,
            f"--temperature={self.temperature} must be a positive number.",
        )
        _require(
            0.0 <= self.alpha <= 1.0,
            f"--alpha={self.alpha} must be in [0, 1]: it is the share of ground truth "
            "kept in the refined labels.",
        )
        _require(
            self.relabel in RELABEL_MODES,
            f"--relabel={self.relabel} must be one of {', '.join(RELABEL_MODES)}.",
        )
        _check_arch(
            self.arch, "arch", ("depth", self.depth != CIFAR_DEPTH),
            ("--width and --resnet_version", (self.width, self.resnet_version) != (1, 1)),
        )
        check_depth(self.depth)
        _require(self.width >= 1, f"--width={self.width} must be >= 1.")
        _require(
            self.resnet_version in RESNET_VERSIONS,
            f"--resnet_version={self.resnet_version} must be 1 (post-activation) or 2 "
            "(pre-activation).",
        )
        if self.refinery_model is not None:
            given = [f"--{name}" for name in REFINERY_FIELDS[:-1] if getattr(self, name) is not None]
            _require(bool(self.refinery_model.strip()), "--refinery_model is empty; give a .keras file or an export.")
            _require(
                not given,
                f"--refinery_model is generation 1 itself, so {', '.join(given)} cannot shape it: "
                "drop one or the other.",
            )
        _check_arch(
            self.arch if self.refinery_arch is None else self.refinery_arch,
            "arch" if self.refinery_arch is None else "refinery_arch",
            ("refinery_depth", self.refinery_depth is not None),
            (
                "--refinery_width and --refinery_version",
                (self.refinery_width or 1, self.refinery_version or 1) != (1, 1),
            ),
        )
        if self.refinery_depth is not None:
            check_depth(self.refinery_depth, "refinery_depth")
        _require(
            self.refinery_width is None or self.refinery_width >= 1,
            f"--refinery_width={self.refinery_width} must be >= 1 (unset: --width).",
        )
        _require(
            self.refinery_version is None or self.refinery_version in RESNET_VERSIONS,
            f"--refinery_version={self.refinery_version} must be 1 (post-activation) or 2 "
            "(pre-activation) (unset: --resnet_version).",
        )
        folder = self.dataset.startswith("folder:")
        _require(
            folder or not self.skip_bad_images,
            "--skip_bad_images only applies to --dataset=folder:PATH.",
        )
        parse_image_size(self.image_size)
        _require(self.crop in CROPS, f"--crop={self.crop} must be one of {', '.join(CROPS)}.")
        _require(
            self.augment or not self.flip,
            "--flip is an augmentation, and --noaugment turns augmentation off: drop one.",
        )
        _require(
            self.augment or self.crop == "translate",
            f"--crop={self.crop} is an augmentation, and --noaugment turns augmentation off: drop one.",
        )
        area, ratio = self.crop_spec.area, self.crop_spec.ratio
        _require(
            0 < area[0] <= area[1] <= 1,
            f"--crop_area={self.crop_area} must be MIN,MAX with 0 < MIN <= MAX <= 1: shares of the image's area.",
        )
        _require(
            0 < ratio[0] <= ratio[1],
            f"--crop_ratio={self.crop_ratio} must be MIN,MAX with 0 < MIN <= MAX: aspect ratios, width / height.",
        )
        changed = [
            f"--{name}" for name in ("crop_area", "crop_ratio")
            if _pair(name, getattr(self, name)) != _pair(name, _default(name))
        ]
        _require(
            self.crop == "inception" or not changed,
            f"{' and '.join(changed)} shape --crop=inception's crops; pass --crop=inception or drop them.",
        )
        if self.crop_center is None and self.crop == "inception":
            # Stored resolved, so the keys of runs that evaluated the whole image (before
            # this flag) are never taken for these.
            object.__setattr__(self, "crop_center", CROP_CENTER)
        _require(
            self.crop_center is None or self.crop == "inception",
            f"--crop_center={self.crop_center} is the evaluation view of --crop=inception; "
            "pass --crop=inception or drop it.",
        )
        _require(
            self.crop_center is None or 0 < self.crop_center <= 1,
            f"--crop_center={self.crop_center} must be in (0, 1]: the share of each side "
            "evaluation's centre crop keeps (1: the whole image).",
        )
        _require(self.epochs >= 1, f"--epochs={self.epochs} must be >= 1.")
        _require(self.batch_size >= 1, f"--batch_size={self.batch_size} must be >= 1.")
        _require(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            f"--learning_rate={self.learning_rate} must be a positive number.",
        )
        _require(
            self.lr_schedule in LR_SCHEDULES,
            f"--lr_schedule={self.lr_schedule} must be one of {', '.join(LR_SCHEDULES)}.",
        )
        if self.warmup_epochs is None:
            # The default warms up for one epoch where there is an epoch to spare and the
            # schedule has a warm-up; stored resolved, so results.json says what ran.
            warmup = 1 if self.epochs > 1 and self.lr_schedule == "cosine" else 0
            object.__setattr__(self, "warmup_epochs", warmup)
        _require(
            0 <= self.warmup_epochs < self.epochs,
            f"--warmup_epochs={self.warmup_epochs} must be >= 0 and less than "
            f"--epochs={self.epochs}.",
        )
        _require(
            self.lr_schedule == "cosine" or self.warmup_epochs == 0,
            f"--warmup_epochs={self.warmup_epochs} applies to --lr_schedule=cosine only; "
            "leave it unset with --lr_schedule=step.",
        )
        _require(0.0 <= self.momentum < 1.0, f"--momentum={self.momentum} must be in [0, 1).")
        _require(
            0 <= self.seed < SEED_LIMIT,
            f"--seed={self.seed} must be in [0, 2**32 - 1 = {SEED_LIMIT - 1}].",
        )
        _require(
            self.split_seed is None or 0 <= self.split_seed < SEED_LIMIT,
            f"--split_seed={self.split_seed} must be in [0, 2**32 - 1 = {SEED_LIMIT - 1}].",
        )
        _require(
            self.repeats >= 1,
            f"--repeats={self.repeats} must be >= 1: it is the number of chains, trained "
            "with seeds --seed, --seed+1, ...",
        )
        _require(
            self.seed + self.repeats - 1 < SEED_LIMIT,
            f"--seed={self.seed} with --repeats={self.repeats} would need seeds past "
            f"2**32 - 1; pass a smaller --seed.",
        )
        _require(
            not self.control or self.generations >= 2,
            f"--control trains a ground-truth twin of generation 2, so it needs "
            f"--generations >= 2 (got --generations={self.generations}).",
        )
        _require(self.weight_decay >= 0, f"--weight_decay={self.weight_decay} must be >= 0.")
        _require(
            self.precision in PRECISIONS,
            f"--precision={self.precision} must be one of {', '.join(PRECISIONS)}.",
        )
        _require(
            not (self.jit_compile and self.deterministic),
            "--jit_compile and --deterministic cannot both be on: Keras turns XLA off under "
            "TensorFlow's op determinism. Pass --nodeterministic to train with XLA, or "
            "--nojit_compile to keep runs reproducible.",
        )
        _require(
            self.distribute in DISTRIBUTES,
            f"--distribute={self.distribute} must be one of {', '.join(DISTRIBUTES)}.",
        )
        _require(
            self.input in INPUTS,
            f"--input={self.input} must be one of {', '.join(INPUTS)}.",
        )
        _require(
            self.input != "stream" or self.dataset != "digits",
            "--input=stream decodes a folder's files or a TFDS dataset's images as it reads them; "
            "--dataset=digits is held in memory (--input=tfdata or memory).",
        )
        _require(bool(self.export_dir.strip()), "--export_dir is empty; the default is saved_models.")
        _require(
            self.export_name is None or bool(EXPORT_NAME.fullmatch(self.export_name)),
            f"--export_name={self.export_name} must be one folder name of letters, digits, "
            "'_', '.' or '-', starting with a letter or digit.",
        )

    @property
    def crop_spec(self) -> Crop:
        """`--crop`, `--crop_area`, `--crop_ratio` and `--crop_center` as one value."""
        return Crop(
            self.crop,
            _pair("crop_area", self.crop_area),
            _pair("crop_ratio", self.crop_ratio),
            1.0 if self.crop_center is None else float(self.crop_center),
        )

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """`--image_size=HxW` as (height, width), or None."""
        return parse_image_size(self.image_size)

    def check_batch_size(self, num_train: int) -> None:
        """A batch larger than the training split would make every epoch one short step."""
        _require(
            self.batch_size <= num_train,
            f"--batch_size={self.batch_size} is larger than the training split "
            f"({num_train} images): each epoch would be one step. Pass --batch_size={num_train} "
            "or less.",
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field, except those ADDED_LATER while at their default: so the records,
        settings and store keys of runs that do not use them are what they were before
        they existed, and runs and searches from then still resume."""
        values = dataclasses.asdict(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ADDED_LATER:
            if values[name] == defaults[name]:
                del values[name]
        return values

    @classmethod
    def fields(cls, *roles: str) -> tuple[str, ...]:
        """The names of the fields that have one of `roles`."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["role"] in roles)

    def settings(self) -> dict[str, Any]:
        """What a resumed run, search or study must share with the one it continues:
        every field but the outputs', as JSON reads it back (tuples as lists)."""
        return settings_of(self.to_dict())

    def architecture(self, generation: int) -> Architecture:
        """Generation `generation`'s architecture: the refinery's for generation 1 (each
        unset flag falling back to the student's), the student's for the rest."""
        student = Architecture.of(self.arch, self.depth, self.width, self.resnet_version)
        if generation > 1:
            return student
        if self.refinery_model is not None:
            return Architecture(0, 1, 1, LOADED)
        return Architecture.of(
            self.arch if self.refinery_arch is None else self.refinery_arch,
            self.depth if self.refinery_depth is None else self.refinery_depth,
            self.width if self.refinery_width is None else self.refinery_width,
            self.resnet_version if self.refinery_version is None else self.refinery_version,
        )

    @property
    def refinement(self) -> Refinement:
        """The chain this run trains: its length, temperature and alpha, as one value."""
        return Refinement(self.generations, self.temperature, self.alpha)

    @property
    def resolved_split_seed(self) -> int:
        """The seed that carves validation (and test) from train: `split_seed`, else `seed`."""
        return self.seed if self.split_seed is None else self.split_seed


def settings_of(values: dict[str, Any]) -> dict[str, Any]:
    """`Config.settings` of a Config's stored `to_dict()` (one from a record)."""
    outputs = Config.fields(OUTPUT)
    return json.loads(json.dumps({k: v for k, v in values.items() if k not in outputs}))


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """`HxW` -> (height, width); None stays None; anything else is a `UserError`."""
    if text is None:
        return None
    match = IMAGE_SIZE.fullmatch(text.strip().lower())
    _require(
        match is not None,
        f"--image_size={text} must be HEIGHTxWIDTH in pixels, e.g. --image_size=32x32.",
    )
    height, width = int(match[1]), int(match[2])
    _require(
        1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE,
        f"--image_size={text}: each side must be 1 to {MAX_IMAGE_SIDE} pixels.",
    )
    return height, width


def _pair(flag: str, text: str) -> tuple[float, float]:
    """`MIN,MAX` (decimals or fractions such as 3/4) as two floats; else a `UserError`."""
    parts = text.split(",")
    try:
        low, high = (float(fractions.Fraction(part.strip())) for part in parts)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--{flag}={text} must be MIN,MAX, two numbers (3/4 style fractions allowed).") from None
    return low, high


def _default(name: str) -> Any:
    return Config.__dataclass_fields__[name].default


def _check_arch(arch: str, flag: str, depth: tuple[str, bool], shape: tuple[str, bool]) -> None:
    """`arch` (given by `--flag`) is a network we build, and no flag that would be ignored
    for it was given: `depth` is (the depth flag, given?), `shape` (the width and version
    flags, either given other than 1?). Refused, not dropped silently."""
    _require(arch in ARCHS, f"--{flag}={arch} must be one of {', '.join(ARCHS)}.")
    if arch == CIFAR_RESNET:
        return
    _require(
        not depth[1],
        f"--{depth[0]} applies to --{flag}=cifar_resnet; {arch}'s depth is in its name "
        f"(leave --{depth[0]} unset).",
    )
    _require(
        arch not in MOBILENETS or not shape[1],
        f"{shape[0]} apply to ResNets; a MobileNet's width multiplier is in its name "
        f"(--{flag}=mobilenet_0.5).",
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)
