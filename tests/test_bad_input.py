"""Bad input, as a table: every case ends in one clear line and exit code 2 before any data
is trained on, or is accepted with what was decided said out loud; nothing is written.

Each `Case` is a `run.py` command line (and, for `folder:` cases, a folder it builds).
`test_bad_input_table` runs each through run.py's own entry point in this process
(`helpers.run_cli`: absl's parsing, then `main`), so the order of checks is the
product's: a refused case must exit 2 with one `error:` line and, where marked
`before_data`, must not have called any reader of data; an accepted case runs until its
data is loaded and checked, and stops there (`DataLoaded`) instead of training. One case
also runs in a real process. `python tests/test_bad_input.py --survey [--root DIR]` runs
every case end to end against the checkout in DIR and counts tracebacks and silent
conversions (docs/bad-input.md lists them).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

if __name__ == "__main__":  # The survey, as a script: this checkout's helpers and package.
    sys.path[:0] = [os.fspath(Path(__file__).resolve().parents[1])]

import numpy as np
import pytest
from helpers import ROOT, exit_line, listing, refusal, run_cli, run_subprocess
from PIL import Image

# Enough to run a chain end to end in seconds, for the survey's accepted cases.
TINY = ("--depth=8", "--epochs=2", "--generations=1", "--batch_size=4", "--verbose=0")


# Folder builders: a base dataset of two classes, and what each case does to it.


def png(path: Path, pixels: np.ndarray, **save) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)


def base(root: Path, size=(12, 12), count=6, classes=("cat", "dog"), split="train") -> None:
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        for i in range(count):
            pixels = (rng.integers(0, 40, (*size, 3)) + 80 * index).astype(np.uint8)
            png(root / split / name / f"{i}.png", pixels)


def with_file(relative: str, content: bytes | Callable[[Path], None], **layout) -> Callable[[Path], None]:
    """The base dataset and one more file."""

    def build(root: Path) -> None:
        base(root, **layout)
        files({relative: content})(root)

    return build


def encoded(pixels: np.ndarray, format: str, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format, **save)
    return buffer.getvalue()


RGB = np.random.default_rng(1).integers(0, 255, (12, 12, 3)).astype(np.uint8)
GREY = RGB[..., 0]


def truncated_png(path: Path) -> None:
    path.write_bytes(encoded(RGB, "PNG")[:200])


def truncated_jpeg(path: Path) -> None:
    pixels = np.random.default_rng(4).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    data = encoded(pixels, "JPEG")
    path.write_bytes(data[: len(data) * 2 // 3])


def symlink_loop(path: Path) -> None:
    os.symlink(path.name, path)


def broken_link(path: Path) -> None:
    os.symlink("nowhere.png", path)


def huge_png(path: Path) -> None:
    """A PNG header claiming 30000 x 30000 pixels: refused before any pixel is read."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    idat = b"IDAT" + zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    )


def sixteen_bit(path: Path) -> None:
    Image.fromarray(np.full((12, 12), 257 * 200, np.uint16)).save(path)


def exif_rotated(path: Path) -> None:
    """Stored 12 wide x 20 high, shown rotated (orientation 6): 20 wide x 12 high."""
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (20, 12, 3)).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, format="JPEG", exif=exif)


def animated_gif(path: Path) -> None:
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)


def cmyk_jpeg(path: Path) -> None:
    Image.fromarray(RGB).convert("CMYK").save(path, format="JPEG")


def palette_png(path: Path) -> None:
    Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE).save(path)


def large_jpeg(path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 255, (1500, 2000, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=80)


# Model files for --refinery_model, written into the case's folder.


def saved_model_file(build: Callable[[], object], name: str = "m.keras") -> Callable[[Path], None]:
    def write(root: Path) -> None:
        build().save(root / name)

    return write


def resnet(shape, classes):
    from krefinery.core.resnet import build_resnet

    return lambda: build_resnet(shape, classes, depth=8)


def with_custom_layer():
    import keras

    class Doubling(keras.layers.Layer):  # Not registered: its file cannot be read without it.
        def call(self, x):
            return x * 2

    inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(Doubling()(inputs))))


def with_lambda():
    import keras

    inputs = keras.Input((8, 8, 1))
    doubled = keras.layers.Lambda(lambda x: x * 2)(inputs)
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(doubled)))


def grey_base(root: Path) -> None:
    base(root)
    for path in (root / "train").rglob("*.png"):
        Image.open(path).convert("L").save(path)


def layout(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        for step in steps:
            step(root)

    return build


def files(contents: dict[str, bytes | Callable[[Path], None]]) -> Callable[[Path], None]:
    """Extra files, by path relative to the dataset root."""

    def build(root: Path) -> None:
        for name, content in contents.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            content(path) if callable(content) else path.write_bytes(content)

    return build


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad (or unusual) input and what must happen.

    `message`: the one error line must contain it (None: the run is accepted).
    `notes`: accepted runs must say these (in stdout and `Source.notes`): what was
    decided about the data. `check(splits)`: what the data must then look like.
    """

    id: str
    args: tuple[str, ...]
    message: str | None
    folder: Callable[[Path], None] | None = None
    notes: tuple[str, ...] = ()
    check: Callable | None = None
    before_data: bool = True  # Refused without reading any image.


def folder_case(id, build, message=None, args=(), **kwargs) -> Case:
    return Case(id, ("--dataset=folder:{data}", "--batch_size=4", *args), message, folder=build, **kwargs)


def channels(n):
    return lambda splits: splits.image_shape[2] == n


TABLE = [
    # Flags: Config.
    Case("generations=0", ("--generations=0",), "--generations=0 must be >= 1"),
    Case("temperature=0", ("--temperature=0",), "--temperature=0.0 must be a positive number"),
    Case("temperature=nan", ("--temperature=nan",), "must be a positive number"),
    Case("alpha=1.5", ("--alpha=1.5",), "--alpha=1.5 must be in [0, 1]"),
    Case("depth=21", ("--depth=21",), "--depth=21 is not a CIFAR-style ResNet depth"),
    Case("refinery_depth=21", ("--refinery_depth=21",), "--refinery_depth=21 is not a CIFAR-style ResNet depth"),
    Case("refinery_width=0", ("--refinery_width=0",), "--refinery_width=0 must be >= 1 (unset: --width)"),
    Case("refinery_version=3", ("--refinery_version=3",), "--refinery_version=3 must be 1 (post-activation) or 2"),
    Case("arch=resnet18 with --depth", ("--arch=resnet18", "--depth=32"), "--depth applies to --arch=cifar_resnet; resnet18's depth is in its name"),
    Case("arch=mobilenet with --width", ("--arch=mobilenet", "--width=2"), "a MobileNet's width multiplier is in its name (--arch=mobilenet_0.5)"),
    Case("refinery_arch=resnet50 with --refinery_depth", ("--refinery_arch=resnet50", "--refinery_depth=14"), "--refinery_depth applies to --refinery_arch=cifar_resnet"),
    Case("arch=vgg", ("--arch=vgg",), "flag --arch=vgg: value should be one of <cifar_resnet|resnet18|"),
    Case("arch=resnet18 on 8x8 digits", ("--arch=resnet18",), "images of 8x8 are too small for --arch=resnet18", before_data=False),
    Case("refinery_arch=mobilenet on 8x8 digits", ("--refinery_arch=mobilenet",), "images of 8x8 are too small for --arch=mobilenet", before_data=False),
    Case("refinery_model with --refinery_depth", ("--refinery_model=m.keras", "--refinery_depth=14"), "--refinery_model is generation 1 itself, so --refinery_depth cannot shape it"),
    Case("refinery_model missing", ("--refinery_model={data}/missing.keras",), "missing.keras: no such file or folder", folder=lambda root: None),
    Case("refinery_model not .keras", ("--refinery_model={data}/m.h5",), "is not a .keras file", folder=files({"m.h5": b"junk"})),
    Case("refinery_model not a zip", ("--refinery_model={data}/m.keras",), "cannot load", folder=files({"m.keras": b"junk"}), before_data=False),
    Case("refinery_model of 3 classes", ("--refinery_model={data}/m.keras",), "gives 3 outputs, but the data has 10 classes", folder=saved_model_file(resnet((8, 8, 1), 3)), before_data=False),
    Case("refinery_model of 16x16 images", ("--refinery_model={data}/m.keras",), "takes images of 16x16x1, but the data's are 8x8x1", folder=saved_model_file(resnet((16, 16, 1), 10)), before_data=False),
    Case("refinery_model with a custom layer", ("--refinery_model={data}/m.keras",), "it needs custom objects", folder=saved_model_file(with_custom_layer), before_data=False),
    Case("refinery_model with a Lambda", ("--refinery_model={data}/m.keras",), "it holds code (a Lambda layer, say), which Keras's safe mode does not run", folder=saved_model_file(with_lambda), before_data=False),
    Case("crop_area=0,1", ("--crop=inception", "--crop_area=0,1"), "--crop_area=0,1 must be MIN,MAX with 0 < MIN <= MAX <= 1"),
    Case("crop_ratio=a,b", ("--crop=inception", "--crop_ratio=a,b"), "--crop_ratio=a,b must be MIN,MAX, two numbers"),
    Case("crop=inception with --noaugment", ("--crop=inception", "--noaugment"), "--crop=inception is an augmentation, and --noaugment turns augmentation off"),
    Case("crop_area without --crop=inception", ("--crop_area=0.5,1",), "--crop_area shape --crop=inception's crops; pass --crop=inception or drop them"),
    Case("flip with --noaugment", ("--flip", "--noaugment"), "--flip is an augmentation, and --noaugment turns augmentation off"),
    Case("input=stream on digits", ("--input=stream",), "--input=stream decodes a folder's files or a TFDS dataset's images as it reads them; --dataset=digits is held in memory"),
    Case("crop_center=0", ("--crop=inception", "--crop_center=0"), "--crop_center=0.0 must be in (0, 1]"),
    Case("crop_center without --crop=inception", ("--crop_center=0.9",), "--crop_center=0.9 is the evaluation view of --crop=inception"),
    Case("val_fraction=0", ("--val_fraction=0",), "--val_fraction=0.0 must be between 0 and 1"),
    Case("val_fraction=1", ("--val_fraction=1",), "must be between 0 and 1"),
    Case("epochs=0", ("--epochs=0",), "--epochs=0 must be >= 1"),
    Case("batch_size=0", ("--batch_size=0",), "--batch_size=0 must be >= 1"),
    Case("learning_rate=-1", ("--learning_rate=-1",), "must be a positive number"),
    Case("momentum=1", ("--momentum=1",), "--momentum=1.0 must be in [0, 1)"),
    Case("weight_decay=-1", ("--weight_decay=-1",), "--weight_decay=-1.0 must be >= 0"),
    Case("seed=-1", ("--seed=-1",), "--seed=-1 must be in [0, 2**32 - 1"),
    Case("seed=2**32", ("--seed=4294967296",), "--seed=4294967296 must be in [0, 2**32 - 1"),
    Case("warmup>=epochs", ("--epochs=2", "--warmup_epochs=2"), "--warmup_epochs=2 must be >= 0 and less than --epochs=2"),
    Case("step+warmup", ("--lr_schedule=step", "--warmup_epochs=1"), "--warmup_epochs=1 applies to --lr_schedule=cosine only"),
    Case("epochs=1 (default warm-up fits)", ("--epochs=1",), None, check=lambda s: True),
    Case("lr_schedule=step (default warm-up fits)", ("--lr_schedule=step",), None),
    Case("export_name=../up", ("--export_name=../up",), "--export_name=../up must be one folder name"),
    Case("export_dir empty", ("--export_dir=",), "--export_dir is empty"),
    Case("dataset empty", ("--dataset=",), "--dataset is empty"),
    Case("image_size=32", ("--dataset=folder:x", "--image_size=32"), "--image_size=32 must be HEIGHTxWIDTH"),
    Case("image_size=0x5", ("--dataset=folder:x", "--image_size=0x5"), "each side must be 1 to 4096"),
    Case("--image_size on digits", ("--image_size=16x12",), None, notes=("every image resized from 8x8 to 16x12 (--image_size)",), check=lambda s: s.image_shape == (16, 12, 1)),
    Case("skip_bad_images without folder", ("--skip_bad_images",), "--skip_bad_images only applies"),
    Case("svhn_extra without svhn", ("--dataset=cifar10", "--svhn_extra"), "--svhn_extra only applies to --dataset=svhn"),
    Case("unknown dataset", ("--dataset=not_a_dataset",), "unknown --dataset=not_a_dataset"),
    Case("input=disk", ("--input=disk",), "flag --input=disk: value should be one of <auto|tfdata|memory|stream>"),
    Case("input=memory, mirrored", ("--input=memory", "--distribute=mirrored"), "--input=memory makes batches on one device; --distribute=mirrored needs tf.data", before_data=False),
    Case("temperature=1e-300 (accepted; a divergence names it)", ("--temperature=1e-300",), None),
    # Flags: absl's own errors and stray arguments.
    Case("bad int", ("--epochs=abc",), "flag --epochs=abc: invalid literal for int()"),
    Case("unknown flag", ("--epoch=3",), "Unknown command line flag 'epoch'"),
    Case("bad enum", ("--relabel=sometimes",), "flag --relabel=sometimes: value should be one of <offline|online>"),
    Case("missing flagfile", ("--flagfile=/no/such.flags",), "/no/such.flags"),
    Case("stray argument", ("image.png",), "unexpected arguments: image.png"),
    # Flags: the search.
    Case("tune_generations inverted", ("--tune", "--tune_generations=3,1"), "--tune_generations=3,1 is inverted"),
    Case("tune_temperature not numbers", ("--tune", "--tune_temperature=a,b"), "--tune_temperature=a,b must be MIN,MAX with numbers"),
    Case("max_trials=0", ("--tune", "--max_trials=0"), "--max_trials=0 must be >= 1"),
    Case("tuner=grid", ("--tune", "--tuner=grid"), "--tuner=grid is not a tuner"),
    # Output folders.
    Case("export_dir is a file", ("--export_dir=file.txt",), "--export_dir=file.txt: file.txt is a file"),
    # Folder layouts.
    Case("no such folder", ("--dataset=folder:/no/such/folder",), "no such folder"),
    folder_case("no train/", files({"test/a/0.png": b""}), "expected class folders under"),
    folder_case("one class", lambda r: base(r, classes=("only",)), "a classifier needs at least 2"),
    folder_case("empty class folder", layout(base, lambda r: (r / "train" / "owl").mkdir()), "train/owl/ holds no image files"),
    folder_case("test class not in train", with_file("test/zebra/0.png", encoded(RGB, "PNG")), "test classes ['zebra'] do not appear in train/"),
    folder_case("empty test class folder", layout(base, lambda r: (r / "test" / "cat").mkdir(parents=True)), "test/cat/ holds no image files"),
    # Bad files.
    folder_case("random bytes", with_file("train/cat/x.jpg", os.urandom(300)), "train/cat/x.jpg: not an image (content unrecognised)", before_data=False),
    folder_case("zero bytes", with_file("train/dog/z.jpg", b""), "train/dog/z.jpg: empty file (0 bytes)", before_data=False),
    folder_case("truncated png", with_file("train/cat/t.png", truncated_png), "train/cat/t.png: damaged or truncated", before_data=False),
    folder_case("truncated jpeg", with_file("train/cat/t.jpg", truncated_jpeg), "train/cat/t.jpg: damaged or truncated", before_data=False),
    folder_case("truncated jpeg, streamed", with_file("train/cat/t.jpg", truncated_jpeg), "train/cat/t.jpg: damaged or truncated", args=("--input=stream",), before_data=False),
    folder_case("symlink loop", with_file("train/cat/loop.png", symlink_loop), "train/cat/loop.png: symbolic link loop", before_data=False),
    folder_case("broken symlink", with_file("train/cat/gone.png", broken_link), "train/cat/gone.png: broken symbolic link", before_data=False),
    folder_case("looping class folder", with_file("train/owl", symlink_loop), "train/owl: symbolic link loop; fix or remove it"),
    folder_case("broken class folder link", with_file("train/owl", lambda p: os.symlink("gone", p)), "train/owl: broken symbolic link; fix or remove it"),
    folder_case("looping link without a suffix", with_file("train/cat/sub", symlink_loop), "train/cat/sub: symbolic link loop", before_data=False),
    folder_case("named pipe", with_file("train/cat/fifo.png", lambda p: os.mkfifo(p)), "train/cat/fifo.png: not a regular file", before_data=False),
    folder_case("unsupported suffix", with_file("train/cat/scan.tif", encoded(RGB, "TIFF")), "train/cat/scan.tif: unsupported file type (.tif", before_data=False),
    folder_case("text file", with_file("train/cat/notes.txt", b"hello"), "train/cat/notes.txt: unsupported file type (.txt", before_data=False),
    folder_case("TIFF named .png", with_file("train/cat/scan.png", encoded(RGB, "TIFF")), "TIFF images are not supported", before_data=False),
    folder_case("decompression bomb", with_file("train/cat/huge.png", huge_png), "train/cat/huge.png: too large (over 179 megapixels)", before_data=False),
    folder_case("bad file in test/ only", with_file("test/dog/bad.jpg", b"GIF89a broken"), "test/dog/bad.jpg:", before_data=False),
    folder_case("many bad files, one line", layout(base, files({f"train/cat/bad{i}.jpg": b"x" for i in range(5)})), "5 bad files: train/cat/bad0.jpg", before_data=False),
    folder_case(
        "--skip_bad_images",
        layout(base, files({"train/cat/x.jpg": b"", "test/dog/ok.png": encoded(RGB, "PNG"), "test/dog/bad.png": b"junk"})),
        None,
        args=("--skip_bad_images",),
        notes=("skipped 2 bad file(s) (--skip_bad_images): test/dog/bad.png: not an image",),
        check=lambda s: s.notes["skipped_files"] == [
            "test/dog/bad.png: not an image (content unrecognised)",
            "train/cat/x.jpg: empty file (0 bytes)",
        ] and (s.num_ids, s.num_test) == (12, 1),
    ),
    folder_case("--skip_bad_images empties a class", layout(lambda r: base(r, count=3), with_file("train/owl/x.png", b"junk")), "every file in train/owl/ is bad", args=("--skip_bad_images",), before_data=False),
    # Splits never empty.
    folder_case("3 classes x 1 image", lambda r: base(r, count=1, classes=("a", "b", "c")), "3 training examples are too few to carve out validation and test splits: 5 are needed here", before_data=False),
    folder_case("2 classes x 1 image", lambda r: base(r, count=1), "2 training examples are too few to carve out validation and test splits: 4 are needed", before_data=False),
    folder_case("2 classes x 2 images", lambda r: base(r, count=2), None, args=("--batch_size=2",), check=lambda s: (s.num_train, s.num_val, s.num_test) == (2, 1, 1)),
    folder_case("a folder, unflipped by default", base, None, check=lambda s: not s.flip_safe),
    folder_case("--flip on a folder", base, None, args=("--flip",), check=lambda s: s.flip_safe),
    folder_case("--input=stream", base, None, args=("--input=stream",), notes=("images checked; each is decoded again whenever it is read",), check=lambda s: s.decode is not None),
    folder_case("batch larger than training set", base, "--batch_size=64 is larger than the training split (10 images)", args=("--batch_size=64",), before_data=False),
    # Mixed formats: accepted, and said.
    folder_case("grey image sorts first", with_file("train/cat/0.png", encoded(GREY, "PNG")), None, notes=("1 greyscale image(s) read as RGB",), check=channels(3)),
    folder_case("alpha channel", with_file("train/cat/a.png", encoded(np.dstack([RGB, GREY]), "PNG")), None, notes=("alpha channel dropped from 1 image(s)",), check=channels(3)),
    folder_case("other size sorts first", with_file("train/cat/0.png", encoded(np.zeros((20, 16, 3), np.uint8), "PNG")), None, notes=("resized 1 of 12 images to 12x12 (most common training size",), check=lambda s: s.image_shape == (12, 12, 3)),
    folder_case("--image_size", base, None, args=("--image_size=16x8",), notes=("resized 12 of 12 images to 16x8 (--image_size",), check=lambda s: s.image_shape == (16, 8, 3)),
    folder_case("16-bit grey PNG", layout(grey_base, files({"train/cat/w.png": sixteen_bit})), None, notes=("16 bit to 8 bit: 1",), check=channels(1)),
    folder_case("palette PNG", with_file("train/cat/p.png", palette_png), None, check=channels(3)),
    folder_case("grey palette PNG stays grey", layout(grey_base, files({"train/cat/p.png": lambda p: Image.fromarray(GREY).convert("P").save(p)})), None, check=channels(1)),
    folder_case("CMYK JPEG", with_file("train/cat/c.jpg", cmyk_jpeg), None, check=channels(3)),
    folder_case("EXIF-rotated JPEG", with_file("train/cat/r.jpg", exif_rotated), None, notes=("exif rotated: 1", "training sizes: 12x12 x12, 12x20 x1"), check=channels(3)),
    folder_case("progressive JPEG", with_file("train/cat/p.jpg", lambda p: p.write_bytes(encoded(RGB, "JPEG", progressive=True))), None),
    folder_case("animated GIF", with_file("train/cat/a.gif", animated_gif), None, notes=("animated first frame: 1",)),
    folder_case("BMP", with_file("train/cat/b.bmp", encoded(RGB, "BMP")), None),
    folder_case("WEBP", with_file("train/cat/w.webp", encoded(RGB, "WEBP")), None),
    folder_case("uppercase extensions", layout(base, files({"train/cat/UP.PNG": encoded(RGB, "PNG"), "train/dog/X.JPEG": encoded(RGB, "JPEG")})), None, check=lambda s: s.num_ids == 14),
    folder_case("unicode and spaces", with_file("train/chat noir/été 1.png", encoded(RGB, "PNG")), None, check=lambda s: s.class_names == ("cat", "chat noir", "dog")),
    folder_case("hidden and system files", layout(base, files({".DS_Store": b"\0", "train/cat/.DS_Store": b"\0", "train/cat/Thumbs.db": b"\0", "train/dog/._0.png": b"\0\5\x16\7"})), None, check=lambda s: s.num_ids == 12 and not s.notes["not_read"]),
    folder_case("PNG named .jpg", with_file("train/cat/x.jpg", encoded(RGB, "PNG")), None),
    folder_case("large photo", with_file("train/cat/big.jpg", large_jpeg), None, notes=("resized 1 of 13 images to 12x12",)),
    folder_case("files outside class folders", layout(base, files({"train/readme.txt": b"x", "labels.csv": b"x", "val/cat/0.png": encoded(RGB, "PNG"), "train/cat/more/1.png": encoded(RGB, "PNG")})), None, notes=("not read (outside PATH/train/<class>/ and PATH/test/<class>/): labels.csv, val/, train/cat/more/, train/readme.txt",)),
    folder_case("colour test image, grey training", layout(grey_base, files({"test/cat/c.png": encoded(RGB, "PNG")})), None, notes=("1 colour test image(s) read as grey",), check=channels(1)),
]


def case_ids() -> list[str]:
    return [case.id for case in TABLE]


def build(case: Case, tmp: Path) -> list[str]:
    """Makes the case's folder (and `file.txt`, a file where a folder is expected) in `tmp`."""
    (tmp / "file.txt").write_text("x")
    data = tmp / "data"
    if case.folder is not None:
        data.mkdir()
        case.folder(data)
    return [arg.replace("{data}", os.fspath(data)) for arg in case.args]


class DataLoaded(Exception):
    """Raised where an accepted run has loaded and checked its data, so that the table
    stops there instead of training: `splits` is what the run records of its data."""

    def __init__(self, splits):
        super().__init__("data loaded")
        self.splits = splits


class DataRead(BaseException):
    """A reader of data was called by a case that must be refused before any data is
    read. A BaseException, so that no `except Exception` in the product can hide it."""


@pytest.fixture
def data_readers(monkeypatch):
    """Guards on what reads data (`guard()`), and a stop right after the data is loaded.

    `guard(opens_source)` makes every reader of image data fail the test: the digits
    arrays, TFDS's records (and downloads), an image file's header or pixels; with
    `opens_source=False`, `load_source` itself too. Every call is listed in the
    returned list, even where the product would catch the exception.
    """
    import tensorflow_datasets as tfds

    from krefinery.chain import experiment
    from krefinery.data import images, sources

    load_feed = experiment.load_feed

    def stop_after_loading(config, replication):
        raise DataLoaded(load_feed(config, replication).info)

    # The product's own order up to here: flags, search flags, work and export folders,
    # devices, then `load_feed` (the data read, split and checked against the batch size).
    monkeypatch.setattr(experiment, "load_feed", stop_after_loading)
    calls = []

    def guard(opens_source: bool) -> list[str]:
        def refuse(name):
            def reader(*args, **kwargs):
                calls.append(name)
                raise DataRead(f"{name} was called: data was read before the run was refused")

            return reader

        for module, name in ((sources, "digits"), (sources, "_download"), (images, "read_header"), (images, "read_pixels")):
            monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))
        monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", refuse("tfds as_dataset"))
        if not opens_source:
            monkeypatch.setattr(sources, "load_source", refuse("load_source"))
        return calls

    return guard


@pytest.mark.parametrize("case", TABLE, ids=case_ids())
def test_bad_input_table(case, tmp_path, capsys, data_readers):
    """Each case through run.py's own entry point (absl's parsing, then `main`), in this
    process: refused with exit 2 and one line, or accepted up to where training would
    start; either way nothing is written."""
    args = build(case, tmp_path)
    before = listing(tmp_path)  # The working folder: default runs/ and saved_models/ land here.
    if case.message is None:
        with pytest.raises(DataLoaded) as loaded:
            run_cli(*args)
        splits = loaded.value.splits
        out = capsys.readouterr().out
        for note in case.notes:
            assert note in out, out
        if case.notes and case.folder is not None:
            assert json.dumps(splits.notes)  # What results.json's "data" gets.
        if case.check is not None:
            assert case.check(splits), splits
    else:
        reads = None
        if case.before_data:
            # A case that names no dataset is refused by the flags alone: no source is opened.
            reads = data_readers(opens_source=any(arg.startswith("--dataset") for arg in args))
        line = refusal(capsys, *args)
        assert case.message in line, line
        assert reads in (None, []), reads
    assert listing(tmp_path) == before  # Nothing written, nothing lost.


def test_pixels_follow_the_stated_rules(tmp_path):
    """What the accepted cases turn into, pixel for pixel: no conversion but the stated ones."""
    from krefinery.data.images import read_pixels

    sixteen_bit(tmp_path / "w.png")
    assert np.all(read_pixels(tmp_path / "w.png", (12, 12, 1)) == 200)  # 257 * 200 / 257.
    png(tmp_path / "grey.png", GREY)
    assert np.array_equal(read_pixels(tmp_path / "grey.png", (12, 12, 3)), np.repeat(GREY[..., None], 3, -1))
    png(tmp_path / "alpha.png", np.dstack([RGB, np.zeros_like(GREY)]))
    assert np.array_equal(read_pixels(tmp_path / "alpha.png", (12, 12, 3)), RGB)  # Alpha dropped.
    palette = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "p.png")
    assert np.array_equal(read_pixels(tmp_path / "p.png", (12, 12, 3)), np.asarray(palette.convert("RGB")))
    stored = np.zeros((20, 12, 3), np.uint8)
    stored[0, 0] = 255  # Top left as stored; orientation 6 shows it top right.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.png", exif=exif)
    shown = read_pixels(tmp_path / "r.png", (12, 20, 3))
    assert shown[0, -1].tolist() == [255, 255, 255] and shown.sum() == 3 * 255
    animated_gif(tmp_path / "a.gif")
    first = np.asarray(Image.open(tmp_path / "a.gif").convert("RGB"))
    assert np.array_equal(read_pixels(tmp_path / "a.gif", (12, 12, 3)), first)


def test_exit_2_smoke_test_in_a_real_process(tmp_path):
    """The process boundary for exit code 2 (the table runs in this process): `python
    run.py` with a bad file in test/, as a shell runs it. It reads the folder before it
    refuses, so TensorFlow and the data readers are loaded, and still it exits 2 with one
    line, no traceback, and writes nothing (no runs/, no saved_models/<name>/)."""
    (case,) = [c for c in TABLE if c.id == "bad file in test/ only"]
    args = build(case, tmp_path)
    before = listing(tmp_path)
    result = run_subprocess(*args, *TINY, cwd=tmp_path)
    assert case.message in exit_line(result, 2)
    assert "Epoch" not in result.stdout
    assert listing(tmp_path) == before


def survey(root: Path, scratch: Path) -> dict:
    """Every case end to end against the checkout in `root`: how each one ends."""
    outcomes = {}
    for case in TABLE:
        tmp = scratch / case.id.replace(" ", "_").replace("/", "_")
        tmp.mkdir(parents=True)
        args = build(case, tmp)
        try:
            result = run_subprocess(*TINY, *args, cwd=tmp, root=root, timeout=180)
        except subprocess.TimeoutExpired:
            outcomes[case.id] = "hangs"
            print(f"{'hangs':22} {case.id}", flush=True)
            continue
        if "Traceback" in result.stderr:
            outcome = "traceback"
        elif result.returncode == 0:
            said = all(note in result.stdout + result.stderr for note in case.notes)
            outcome = "accepted" if case.message is None and said else (
                "silent conversion" if case.notes else "accepted, no error" if case.message else "accepted"
            )
        elif result.returncode == 2 and case.message and case.message in result.stderr:
            outcome = "clear error"
        else:
            outcome = f"other error (exit {result.returncode})"
        outcomes[case.id] = outcome
        print(f"{outcome:22} {case.id}", flush=True)
    return outcomes


if __name__ == "__main__":
    import argparse
    import collections
    import tempfile

    parser = argparse.ArgumentParser(description=survey.__doc__)
    parser.add_argument("--survey", action="store_true", required=True)
    parser.add_argument("--root", type=Path, default=ROOT)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        counts = collections.Counter(survey(options.root.resolve(), Path(scratch)).values())
    print(f"{len(TABLE)} cases:", dict(counts))
