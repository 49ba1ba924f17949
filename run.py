"""Label Refinery from the command line.

  python run.py                                  # digits, offline, a few minutes on a CPU
  python run.py --dataset=svhn --generations=3   # TFDS svhn_cropped
  python run.py --flagfile=flags/cifar10.flags   # a full-length preset
  python run.py --tune --max_trials=6            # keras-tuner search over generations and T
  python run.py --predict --model=saved_models/digits image.png ...
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from typing import NoReturn

# TensorFlow's C++ log: errors only, unless the user chose a level (0 or 1 also shows its
# start-up notices: krefinery/runtime/console.py).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from krefinery import files, stops  # noqa: E402
from krefinery.commands.search_space import TUNERS, TuneConfig, parse_range  # noqa: E402
from krefinery.config import (  # noqa: E402
    ARCHS,
    CROP_CENTER,
    CROPS,
    DISTRIBUTES,
    INPUTS,
    LR_SCHEDULES,
    PRECISIONS,
    RELABEL_MODES,
    Config,
)
from krefinery.errors import (  # noqa: E402
    DiskFull,
    Diverged,
    Interrupted,
    PeerLost,
    SearchDiverged,
    UserError,
)
from krefinery.runtime import console  # noqa: E402
from krefinery.runtime.hosts import (  # noqa: E402
    ALONE,
    WORKDIR_NEEDED,
    Hosts,
    exit_now,
    is_peer_failure,
    join,
    lost,
    requested,
)

_DEFAULTS = Config()

flags.DEFINE_string(
    "dataset",
    _DEFAULTS.dataset,
    "'digits' (bundled, offline), 'folder:PATH' (PATH/train/<class>/*, optional "
    "PATH/test/<class>/*), or a TFDS name: svhn, cifar10, cifar100, mnist, fashion_mnist, ...",
)
flags.DEFINE_string("data_dir", _DEFAULTS.data_dir, "TFDS data directory (prepared datasets).")
flags.DEFINE_bool("svhn_extra", _DEFAULTS.svhn_extra, "Add SVHN's 531k 'extra' split to training.")
flags.DEFINE_float("val_fraction", _DEFAULTS.val_fraction, "Share of train held out for validation.")
flags.DEFINE_bool("augment", _DEFAULTS.augment, "Random translation or --crop (and flips where safe).")
flags.DEFINE_bool(
    "flip",
    _DEFAULTS.flip,
    "Mirror training images at random (with --augment); unset: for TFDS photos of things "
    "(CIFAR, ImageNet, ...), never for digits, house numbers or folders.",
)
flags.DEFINE_enum(
    "crop",
    _DEFAULTS.crop,
    CROPS,
    "--augment's crop: translate (pad and shift by up to 1/8 of the side, CIFAR's) or "
    "inception (random-resized crops of --crop_area and --crop_ratio, resized back by "
    "nearest neighbour; for ImageNet-style data).",
)
flags.DEFINE_string("crop_area", _DEFAULTS.crop_area, "--crop=inception: MIN,MAX share of the image's area.")
flags.DEFINE_string("crop_ratio", _DEFAULTS.crop_ratio, "--crop=inception: MIN,MAX aspect ratio, width / height.")
flags.DEFINE_float(
    "crop_center",
    _DEFAULTS.crop_center,
    "--crop=inception: the share of each side evaluation's centre crop keeps, for validation, "
    f"test, offline relabelling and the served export (unset: {CROP_CENTER}, torchvision's 224/256; "
    "1: the whole image).",
)
flags.DEFINE_bool(
    "skip_bad_images",
    _DEFAULTS.skip_bad_images,
    "folder:PATH: leave out files that are not readable images (listed in the log and "
    "results.json) instead of stopping at them.",
)
flags.DEFINE_string(
    "image_size",
    _DEFAULTS.image_size,
    "HxW every image is resized to (bilinear), for any dataset; default: the dataset's size "
    "(folder:PATH: the most common training size).",
)
flags.DEFINE_integer("generations", _DEFAULTS.generations, "Generations in the chain.")
flags.DEFINE_float("temperature", _DEFAULTS.temperature, "Softmax temperature of refined labels.")
flags.DEFINE_float("alpha", _DEFAULTS.alpha, "Share of ground truth kept in refined labels.")
flags.DEFINE_enum(
    "relabel",
    _DEFAULTS.relabel,
    RELABEL_MODES,
    "offline: relabel the training set once per generation; online: the previous "
    "generation, frozen, labels every augmented batch.",
)
flags.DEFINE_enum(
    "arch",
    _DEFAULTS.arch,
    ARCHS,
    "The network: cifar_resnet (a 3x3 stem, for small images; --depth sets its depth) or "
    "an ImageNet-style one, whose stem downsamples (images of at least 32x32): resnet18, "
    "resnet34, resnet50, mobilenet (v1) and its width multipliers mobilenet_0.75, _0.5, _0.25.",
)
flags.DEFINE_integer("depth", _DEFAULTS.depth, "CIFAR ResNet depth, 6n+2 (20, 32, 56, 110, ...).")
flags.DEFINE_integer("width", _DEFAULTS.width, "ResNet filter multiplier.")
flags.DEFINE_integer("resnet_version", _DEFAULTS.resnet_version, "1: post-, 2: pre-activation.")
flags.DEFINE_enum(
    "refinery_arch",
    _DEFAULTS.refinery_arch,
    ARCHS,
    "The network of generation 1, the refinery that labels the data for the rest (default: --arch).",
)
flags.DEFINE_integer(
    "refinery_depth",
    _DEFAULTS.refinery_depth,
    "Depth of generation 1, the refinery that labels the data for the rest (default: --depth).",
)
flags.DEFINE_integer("refinery_width", _DEFAULTS.refinery_width, "Width of generation 1 (default: --width).")
flags.DEFINE_integer(
    "refinery_version", _DEFAULTS.refinery_version, "ResNet version of generation 1 (default: --resnet_version)."
)
flags.DEFINE_string(
    "refinery_model",
    _DEFAULTS.refinery_model,
    "A trained model as generation 1, never trained: a .keras file, or a version (or model "
    "folder) this project exported. It must take raw pixels of the data's size and give "
    "logits for its classes; read in Keras's safe mode.",
)
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Epochs per generation.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Training batch size.")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Peak SGD learning rate.")
flags.DEFINE_enum("lr_schedule", _DEFAULTS.lr_schedule, LR_SCHEDULES, "Per-generation schedule.")
flags.DEFINE_integer(
    "warmup_epochs",
    None,
    "Linear warm-up epochs (cosine only); default: 1, or 0 with --epochs=1 or --lr_schedule=step.",
)
flags.DEFINE_float("momentum", _DEFAULTS.momentum, "SGD momentum.")
flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "L2 weight decay on kernels.")
flags.DEFINE_enum(
    "precision",
    _DEFAULTS.precision,
    PRECISIONS,
    "Keras dtype policy; auto: the fastest measured per machine kind (see "
    "krefinery/runtime/device.py). The soft-target loss is always computed in float32.",
)
flags.DEFINE_bool(
    "jit_compile",
    _DEFAULTS.jit_compile,
    "Compile training and relabelling steps with XLA; unset: per machine kind (off on "
    "every kind so far, see krefinery/runtime/device.py), and never with --deterministic.",
)
flags.DEFINE_bool(
    "deterministic",
    _DEFAULTS.deterministic,
    "TensorFlow op determinism: the same run gives the same weights. Unset: on, unless "
    "--jit_compile is given (Keras allows one or the other).",
)
flags.DEFINE_enum(
    "distribute",
    _DEFAULTS.distribute,
    DISTRIBUTES,
    "Devices to train on: none (one), mirrored (TensorFlow, this machine's GPUs), "
    "multi_worker (TensorFlow, the machines TF_CONFIG names), data_parallel (JAX's "
    "devices); auto: multi_worker if TF_CONFIG is set (refused for now: Keras 3 fails "
    "under it), else all accelerators if several. "
    "--batch_size is the global batch.",
)
flags.DEFINE_enum(
    "input",
    _DEFAULTS.input,
    INPUTS,
    "How examples reach the step: tfdata (a tf.data pipeline on the host), memory "
    "(arrays on the device, batches made there; no TensorFlow needed on JAX) or stream "
    "(tf.data decoding a folder's or a TFDS dataset's images each time it reads them: data larger "
    "than memory); auto: "
    "memory without TensorFlow installed, or on an accelerator when the training images "
    "take at most 4 GiB; else tfdata.",
)
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for splits, shuffling, augmentation, weights.")
flags.DEFINE_integer("split_seed", _DEFAULTS.split_seed, "Seed for the splits alone (default: --seed).")
flags.DEFINE_integer(
    "repeats",
    _DEFAULTS.repeats,
    "Chains to train, with seeds --seed, --seed+1, ... on --seed's splits; > 1 prints a "
    "study: mean, sd and paired 95% intervals per generation (see docs/studies.md).",
)
flags.DEFINE_bool(
    "control",
    _DEFAULTS.control,
    "Also train generation 2's twin on the ground truth (its seed and batches, alpha=1), "
    "to tell the refined labels' effect from a new seed's.",
)
flags.DEFINE_string("workdir", _DEFAULTS.workdir, "Output folder (default: runs/<dataset>-<time>).")
flags.DEFINE_integer(
    "verbose",
    _DEFAULTS.verbose,
    "Keras verbosity: 0 silent, 1 progress bars, 2 a line an epoch (the default where the "
    "output is not a terminal).",
)
flags.DEFINE_string("export_dir", _DEFAULTS.export_dir, "Models go to <export_dir>/<name>/<version>/.")
flags.DEFINE_string("export_name", _DEFAULTS.export_name, "Exported model name (default: the dataset).")
flags.DEFINE_bool(
    "export_all_generations",
    _DEFAULTS.export_all_generations,
    "Also export every generation, as <name>_gen<k>; <name> always holds the best.",
)
flags.DEFINE_bool("predict", False, "Classify the image files given as arguments with --model.")
flags.DEFINE_string("model", None, "--predict: a SavedModel version, or a model folder (its latest).")
flags.DEFINE_integer("top_k", 3, "--predict: classes printed per image.")

_TUNE = TuneConfig()
flags.DEFINE_bool("tune", False, "Search generations and temperature with keras-tuner (see docs/tuning.md).")
flags.DEFINE_string("tune_generations", "{},{}".format(*_TUNE.generations), "MIN,MAX generations.")
flags.DEFINE_string("tune_temperature", "{:g},{:g}".format(*_TUNE.temperature), "MIN,MAX temperature (log grid).")
flags.DEFINE_string("tune_alpha", None, "MIN,MAX alpha (steps of 0.1); default: --alpha, fixed.")
flags.DEFINE_string("tuner", _TUNE.tuner, f"keras-tuner algorithm: {', '.join(TUNERS)}.")
flags.DEFINE_integer("max_trials", _TUNE.max_trials, "Trials in the search.")

FLAGS = flags.FLAGS


def config_from_flags() -> Config:
    """The only place that reads flags: every Config field has a flag of the same name."""
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(Config)}
    if not FLAGS["verbose"].present and not sys.stdout.isatty():
        values["verbose"] = 2  # In a log file, a line an epoch, not every update of a bar.
    return Config(**values)


def tune_config_from_flags() -> TuneConfig:
    alpha = FLAGS.tune_alpha
    return TuneConfig(
        generations=parse_range("tune_generations", FLAGS.tune_generations, int),
        temperature=parse_range("tune_temperature", FLAGS.tune_temperature, float),
        alpha=None if alpha is None else parse_range("tune_alpha", alpha, float),
        tuner=FLAGS.tuner,
        max_trials=FLAGS.max_trials,
    )


def predict(filenames: list[str]) -> None:
    """`--predict`: top classes of image files, from the SavedModel alone."""
    if not FLAGS.model:
        raise UserError("--predict needs --model=PATH, a SavedModel version or model folder.")
    if FLAGS.top_k < 1:
        raise UserError(f"--top_k={FLAGS.top_k} must be >= 1.")
    from krefinery.commands import predict as predict_lib

    predictions = predict_lib.predict_files(
        FLAGS.model, filenames, FLAGS.top_k, on_note=lambda note: print(f"note: {note}", file=sys.stderr)
    )
    print(predict_lib.format_predictions(predictions))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with its errors as one line and exit code 2, like every bad value.

    Usage is printed only when asked for (`--help`, `--helpfull`).
    """
    try:
        return FLAGS(argv)
    except flags.Error as error:
        message = " ".join(str(error).split())
        fail(f"{message} (python run.py --helpfull lists every flag).")


# The Keras backends krefinery trains on; each is the Python package of its name.
BACKENDS = ("tensorflow", "jax", "torch")


def import_keras() -> None:
    """Keras on the backend KERAS_BACKEND names: a backend krefinery does not train on,
    or one whose package is not installed, is one line, found before TensorFlow's few
    seconds of loading, not the traceback of Keras's import."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend not in BACKENDS:
        raise UserError(
            f"KERAS_BACKEND={backend} is not a Keras backend krefinery trains on: use "
            "tensorflow (the default), jax or torch."
        )
    try:
        if importlib.util.find_spec(backend) is None:
            raise ModuleNotFoundError(name=backend)
        # Keras loads TensorFlow wherever it is installed, on every backend (its
        # set_random_seed seeds TensorFlow too): here first, with its start-up notices hidden.
        console.load_tensorflow()
        import keras  # noqa: F401
    except ImportError as error:  # The backend's package, or one its imports need.
        raise UserError(
            f"KERAS_BACKEND={backend} needs the Python package '{error.name}', which is not "
            "installed: install it, or run with KERAS_BACKEND=tensorflow (the default) or jax."
        ) from None


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    """Exit codes: 0 done, 2 bad input (nothing written), 3 a generation diverged (with
    --tune: generation 1, so no trial produced a model),
    4 out of disk space (rerun the same command to resume once space is freed),
    130 and 143 stopped by SIGINT (Ctrl-C) or SIGTERM (rerun the same command to resume).

    A signal stops the command cleanly: the epoch in flight is abandoned (the last
    epoch's checkpoint is on disk), an export in flight leaves no version, and one line
    says where it stopped. The handlers are this function's alone, restored on return.
    """
    with stops.on_signals():
        try:
            command(argv)
            try:
                stops.check()  # A stop swallowed on the way (see krefinery/stops.py).
            except Interrupted as stop:
                raise stop.locate("as the command finished", "prints its results again")
        except Interrupted as stop:
            print(stop, file=sys.stderr)
            sys.exit(stop.exit_code)


def command(argv: list[str]) -> None:
    """What `main` runs: --predict, a study, a search or a run, with their errors as one
    line and an exit code."""
    if not FLAGS["verbosity"].present:
        # absl's INFO default would print TensorFlow's SavedModel-writing chatter.
        absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        import_keras()
    except UserError as error:
        fail(str(error))
    if FLAGS.predict:
        try:
            predict(argv[1:])
        except UserError as error:
            fail(str(error))
        except Interrupted as stop:
            raise stop.locate("while predicting", "predicts again")
        return
    if len(argv) > 1:
        fail(
            f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value; image "
            "files are only taken with --predict)."
        )
    hosts = ALONE
    try:
        config = config_from_flags()
        if requested() > 1:
            if FLAGS.tune:
                raise UserError(
                    "--tune does not run across the processes of one run: a search across "
                    "machines runs keras-tuner's chief and workers, one process each "
                    "(docs/tuning.md)."
                )
            if not config.workdir:
                raise UserError(WORKDIR_NEEDED)
            from krefinery.runtime import distribute

            distribute.check_several(config.distribute, os.environ.get("KERAS_BACKEND", "tensorflow"))
            hosts = join()
        if FLAGS.tune and (config.repeats > 1 or config.control):
            raise UserError(
                "--repeats and --control do not combine with --tune: run the study on the "
                "configuration the search found (README, 'Is refinement helping?')."
            )
        if config.distribute == "multi_worker" and (FLAGS.tune or config.repeats > 1 or config.control):
            raise UserError(
                "--distribute=multi_worker trains one chain (a plain run): drop --tune, "
                "--repeats and --control, or use --distribute=mirrored on one machine."
            )
        if config.repeats > 1 or config.control:
            from krefinery.commands import study
            from krefinery.outputs import study_report

            record = study.run_study(config, hosts)
            print(study_report.format_study(record) if hosts.writer else done(hosts))
            return
        if FLAGS.tune:
            search = tune_config_from_flags()
            from krefinery.commands import tune as tuning

            record = tuning.tune(config, search)
            print(tuning.format_trials(record) if record else "worker done; the chief reports.")
            return
        # Imported here so that --help and flag errors need not wait for TensorFlow.
        from krefinery.commands import train
        from krefinery.outputs import report

        results = train.train_and_evaluate(config, hosts)
    except PeerLost as error:
        exit_now(error)
    except Diverged as error:
        if error.results and hosts.writer:
            from krefinery.outputs import report

            print(report.format_table(error.results))
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except (UserError, DiskFull, SearchDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except Exception as error:
        if hosts.several and is_peer_failure(error):
            exit_now(lost(hosts, error))
        # A full disk that a writer reported its own way (TensorBoard's, say): exit 4 too.
        full = files.disk_full(error)
        if full is None:
            raise
        print(f"error: {full}", file=sys.stderr)
        sys.exit(full.exit_code)
    print(report.format_table(results) if hosts.writer else done(hosts))


def done(hosts: Hosts) -> str:
    """What a process other than process 0 ends with: the report is process 0's."""
    return f"process {hosts.index} of {hosts.count} done; process 0 reports."


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
