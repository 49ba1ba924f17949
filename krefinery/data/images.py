"""How an image file becomes uint8 pixels: the one set of rules for training and `--predict`.

Files are read with Pillow, which identifies a file by its content and knows the colour
modes a photo folder holds. The rules, each applied the same way everywhere:

- formats: PNG, JPEG, GIF, BMP and WEBP (identified by content; the name must end in
  one of `SUFFIXES`, in any case); an animated file gives its first frame;
- orientation: the EXIF orientation tag is applied, as photo viewers do;
- depth: 16-bit images are scaled to 8 bits (value / 257, rounded);
- channels: 1 (grey) or 3 (RGB). Grey read as RGB is copied to all three channels;
  colour read as grey is ITU-R 601 luma; an alpha channel is dropped;
- size: stretched (not cropped) to the size asked for, bilinear with antialiasing.

Anything that cannot be read this way raises `BadImage`, whose message says what is
wrong with the file in a few words.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
FORMATS = {"PNG", "JPEG", "MPO", "GIF", "BMP", "WEBP"}  # MPO: multi-picture JPEG (cameras).
# Files a file manager leaves beside photos; never images, never worth a word.
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
# Pillow refuses images above 2 * MAX_IMAGE_PIXELS (~179 megapixels) as decompression
# bombs; between 1x and 2x it only warns, and such photos (100 MP cameras) are fine here.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"}
WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}  # More than 8 bits per pixel.
ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
EXIF_ORIENTATION = 0x0112
TRANSPOSED = {5, 6, 7, 8}  # Orientations that swap width and height.


class BadImage(Exception):
    """A file that is not a readable image; the message is what is wrong, in a few words."""


@dataclasses.dataclass(frozen=True)
class Header:
    """What a file's header says, read without decoding the pixels."""

    height: int  # As displayed: after the EXIF orientation.
    width: int
    colour: bool
    alpha: bool
    wide: bool  # More than 8 bits per channel.
    rotated: bool  # An EXIF orientation other than "as stored".
    animated: bool

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


def is_ignored(name: str) -> bool:
    """Hidden files (`.DS_Store`, `._x.jpg`) and file-manager metadata (`Thumbs.db`)."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def has_image_suffix(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def read_header(path: str | os.PathLike) -> Header:
    """Size and colour mode of an image file, or `BadImage`; the pixels are not decoded."""
    with _open(path) as image:
        mode = image.mode
        colour = mode not in GREY_MODES and not (mode in ("P", "PA") and _grey_palette(image))
        alpha = mode in ALPHA_MODES or "transparency" in image.info
        orientation = _orientation(image)
        width, height = image.size
        if orientation in TRANSPOSED:
            width, height = height, width
        return Header(
            height=height,
            width=width,
            colour=colour,
            alpha=alpha,
            wide=mode in WIDE_MODES or image.info.get("bits", 8) > 8,
            rotated=orientation not in (None, 1),
            animated=getattr(image, "n_frames", 1) > 1,
        )


def read_pixels(path: str | os.PathLike, shape: tuple[int, int, int]) -> np.ndarray:
    """The file as uint8 `[height, width, channels]` of `shape`, by the module's rules."""
    height, width, channels = shape
    with _open(path) as image:
        try:
            if image.format in ("JPEG", "MPO"):
                # Decodes at 1/2, 1/4 or 1/8 scale where that still covers the target size:
                # large photos then cost a fraction of their full decode.
                portrait = _orientation(image) in TRANSPOSED
                image.draft("RGB" if channels == 3 else "L", (height, width) if portrait else (width, height))
            image.load()
            if _orientation(image) not in (None, 1):
                ImageOps.exif_transpose(image, in_place=True)
            image = _to_8_bit(image, channels)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, np.uint8)
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError) as error:
            raise BadImage(f"damaged or truncated ({_reason(error)})") from None
    return pixels.reshape(height, width, channels)


def link_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with `path` if it is a symbolic link that leads nowhere: a loop, or a
    broken link; None for anything else."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as error:
        return "symbolic link loop" if error.errno == errno.ELOOP else "broken symbolic link"
    return None


def _open(path: str | os.PathLike) -> Image.Image:
    try:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise BadImage("broken symbolic link" if os.path.islink(path) else "no such file") from None
        if stat.S_ISDIR(info.st_mode):
            raise BadImage("a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise BadImage("not a regular file (a pipe, socket or device)")  # Would block.
        if info.st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (content unrecognised)") from None
    except Image.DecompressionBombError:
        raise BadImage(f"too large (over {MAX_PIXELS / 1e6:.0f} megapixels)") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BadImage("symbolic link loop") from None
        if error.errno == errno.ENOENT:
            raise BadImage("no such file") from None
        raise BadImage(f"cannot read ({error.strerror or error})") from None
    except (ValueError, SyntaxError, EOFError) as error:
        raise BadImage(f"damaged header ({_reason(error)})") from None
    if image.format not in FORMATS:
        image.close()
        raise BadImage(
            f"{image.format} images are not supported (PNG, JPEG, GIF, BMP and WEBP are)"
        )
    return image


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - damaged EXIF: the pixels may still be fine.
        return None


def _grey_palette(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def _to_8_bit(image: Image.Image, channels: int) -> Image.Image:
    """An 8-bit L or RGB image; Pillow's own `convert` clips 16-bit values instead of scaling."""
    if image.mode in WIDE_MODES:
        values = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow converts transparent palettes via RGBA.
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:120]


def resize_all(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`uint8 [n, H, W, C]` images resized to `size` (height, width) as a folder's files
    are (`read_pixels`: Pillow, bilinear)."""
    height, width = size
    out = np.empty((len(pixels), height, width, pixels.shape[-1]), np.uint8)
    for index, image in enumerate(pixels):
        grey = image.shape[-1] == 1
        picture = Image.fromarray(image[..., 0] if grey else image)
        resized = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR))
        out[index] = resized[..., None] if grey else resized
    return out
