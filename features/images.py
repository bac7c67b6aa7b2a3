"""Decode image files of any common kind into fixed-size RGB arrays, refusing bad ones.

Every failure becomes an :class:`ImageDecodeError` with a short reason, so the
extraction loop can skip and report the file instead of crashing or writing a
garbage row.

This module imports only the standard library, numpy and Pillow, and nothing of tlearn:
``tlearn export`` copies it as it is beside the exported network, so the folder's
``predict.py`` decodes with this very code (pipeline/export.py).
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_EXIF_ORIENTATION = 0x0112
# Pillow's own default; beyond it an image is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageDecodeError(Exception):
    """An image file that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a visible file whose extension (any case) is an image extension."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_BLOCK_VALUES = 1 << 18  # elements converted at a time: about 1 MB of scratch memory


def _wide_gray_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float grayscale as 8-bit ``L``, a block of rows at a time.

    Pillow's ``convert`` would clip 16-bit values to 255, so values are rescaled;
    converting block by block keeps the scratch memory to a few MB (a whole-image
    float64 copy of a 90-megapixel scan would cost 0.7 GB each).
    """
    arr = np.asarray(img)
    out = np.empty(arr.shape, dtype=np.uint8)
    rows = max(1, _BLOCK_VALUES // max(1, arr.shape[1] if arr.ndim > 1 else 1))
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = np.float32(255.0 / (hi - lo)) if hi > lo else np.float32(0.0)
        for start in range(0, arr.shape[0], rows):
            block = np.nan_to_num((arr[start:start + rows] - np.float32(lo)) * scale)
            out[start:start + rows] = np.clip(block, 0, 255).astype(np.uint8)
    else:
        sixteen = img.mode.startswith("I;16") or int(arr.max(initial=0)) > 255
        for start in range(0, arr.shape[0], rows):
            block = np.clip(arr[start:start + rows], 0, 65535 if sixteen else 255)
            if sixteen:
                block = (block.astype(np.uint32) + 128) // 257  # round(v / 257) in integers
            out[start:start + rows] = block.astype(np.uint8)
    return Image.fromarray(out, mode="L")


def to_rgb(img: Image.Image, size: int | None = None) -> Image.Image:
    """8-bit RGB from any mode (16-bit rescaled, transparency composited on white).

    With ``size``, wide grayscale images are resized while still one channel,
    before the RGB copy is made.
    """
    if img.mode in _WIDE_GRAY_MODES:
        gray = _wide_gray_to_8bit(img)
        if size is not None and gray.size != (size, size):
            gray = gray.resize((size, size), Image.Resampling.BILINEAR)
        return gray.convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become white rather than whatever colour they hide.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(
    path: str | os.PathLike, size: int | None, *, max_pixels: int = DEFAULT_MAX_PIXELS,
    cells: int = 0,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Read an image file as an RGB ``uint8`` array of shape ``(size, size, 3)``.

    This is the one image reader of tlearn: extraction, prediction, serving,
    fine-tuning and augmentation all decode through it.

    Grayscale, RGBA, CMYK, palette and 16-bit images are converted to 8-bit RGB;
    EXIF orientation is applied; resizing is bilinear to a square, ignoring aspect.

    Parameters
    ----------
    path : path-like
        The image file.
    size : int or None
        Side of the output square; None keeps the image's own size (augmentation).
    max_pixels : int, default=89_478_485
        Images with more pixels are refused as possible decompression bombs.
    cells : int, default=0
        With a side, also the image as ``cells`` x ``cells`` box averages of the
        decoded picture before its resize to ``size`` (uint8 RGB): ``(pixels, cells)``
        is returned. They do not depend on ``size``, except for JPEGs at least twice
        as large as it, which libjpeg decodes at a reduced scale.

    Raises
    ------
    ImageDecodeError
        Zero-byte, unreadable, truncated, non-image or oversized files.
    """
    try:
        if os.path.getsize(path) == 0:
            raise ImageDecodeError(path, "empty file (0 bytes)")
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({exc.strerror or exc})") from exc
    return _decode(path, path, size, max_pixels, cells=cells)


def decode_image(data: bytes, size: int | None, *, name: str = "upload",
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 on_size: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Like :func:`load_image`, for image bytes held in memory (nothing touches the disk).

    ``on_size(width, height)``, when given, hears the size Pillow is about to decode
    (after JPEG's reduced-scale draft) before any pixel is decoded; it may raise
    :class:`ImageDecodeError` to refuse the image (a server's per-request pixel budget).

    Raises
    ------
    ImageDecodeError
        With ``path`` set to ``name``.
    """
    if len(data) == 0:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, size, max_pixels, on_size)


def _decode(source, path, size: int | None, max_pixels: int,
            on_size: Callable[[int, int], None] | None = None, cells: int = 0
            ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    try:
        # No warnings.catch_warnings here: it swaps process-wide state and decoding runs
        # in threads. Pillow raises DecompressionBombError above twice its own limit;
        # below that, the explicit size check refuses anything over ``max_pixels``.
        with Image.open(source) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    path, f"refused: {width}x{height} pixels exceeds the limit of "
                    f"{max_pixels} (possible decompression bomb)")
            if size is not None and img.format == "JPEG" and img.mode in ("RGB", "L",
                                                                           "CMYK"):
                # Let libjpeg decode at a reduced scale when the image is much larger
                # than needed: far less work, and the bilinear resize follows anyway.
                img.draft("RGB", (size, size))
            if on_size is not None:
                on_size(*img.size)
            img.load()
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                # exif_transpose copies even upright images: call it only when needed
                img = ImageOps.exif_transpose(img)
            rgb = img if img.mode == "RGB" else to_rgb(img, size)
            thumbnail = _box_cells(rgb, cells) if cells else None
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(rgb, dtype=np.uint8)
            return pixels if thumbnail is None else (pixels, thumbnail)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(path, f"refused: {exc}".split(". ")[0]) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(path, "not an image (format not recognised)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc) or exc.__class__.__name__
        reason = "truncated image" if "truncated" in text.lower() else f"unreadable image: {text}"
        raise ImageDecodeError(path, reason) from exc


def _box_cells(rgb: Image.Image, cells: int) -> np.ndarray:
    """``cells`` x ``cells`` box averages of an RGB image, uint8."""
    return np.asarray(rgb.resize((cells, cells), Image.Resampling.BOX), dtype=np.uint8)


# -- decoding on a GPU ---------------------------------------------------------------------------

#: JPEG files at least this large are decoded on the GPU where a decoder is there (see
#: :func:`nvjpeg_decoder`): phone photos of megabytes decode many times faster with
#: nvJPEG than on a CPU core, while files of tens of kB (a dataset's 320-px photos) cost
#: more in copies than they gain. ``bench/gpu.py`` measures both.
DEVICE_DECODE_MIN_BYTES = 1_000_000

#: Decodes plain JPEG files, resized to ``size``: ``decode(paths, size)`` gives one RGB
#: uint8 array per path, in order, or raises if any of them fails.
DeviceDecoder = Callable[[Sequence[str], int], list[np.ndarray]]


def nvjpeg_decoder() -> DeviceDecoder | None:
    """The GPU's JPEG decoder (torchvision's nvJPEG), or None without torch, torchvision or CUDA.

    Full-size decoding on the GPU, then an antialiased bilinear resize there; pixels
    agree with :func:`load_image` (JPEG draft then bilinear) within a few levels
    (``bench/gpu.py`` records the largest difference).
    """
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec(
            "torchvision") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    import torchvision
    from torchvision.io import decode_jpeg

    def decode(paths: Sequence[str], size: int) -> list[np.ndarray]:
        decoded = decode_jpeg([torchvision.io.read_file(p) for p in paths], device="cuda",
                              mode=torchvision.io.ImageReadMode.RGB)
        return [torch.nn.functional.interpolate(
            img[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]
            .round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            for img in decoded]

    return decode


def _plain_jpeg(path: str, max_pixels: int) -> bool:
    """A baseline-decodable RGB or grey JPEG, upright, within ``max_pixels``: what the device
    decoder gives the same pixels for. Anything else is read by :func:`load_image`."""
    try:
        with Image.open(path) as img:  # the header only
            width, height = img.size
            return (img.format == "JPEG" and img.mode in ("RGB", "L")
                    and width * height <= max_pixels
                    and img.getexif().get(_EXIF_ORIENTATION, 1) == 1)
    except Exception:  # whatever it is, load_image says why in its own words
        return False


def goes_to_device(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """Whether :func:`load_images` hands ``path`` to a device decoder: a large plain JPEG."""
    try:
        large = os.path.getsize(path) >= DEVICE_DECODE_MIN_BYTES
    except OSError:
        return False
    return large and Path(path).suffix.lower() in (".jpg", ".jpeg") and _plain_jpeg(
        path, max_pixels)


def load_images(paths: Sequence[str | os.PathLike], size: int, *,
                max_pixels: int = DEFAULT_MAX_PIXELS,
                device_decoder: DeviceDecoder | None = None, cells: int = 0
                ) -> list[np.ndarray | tuple[np.ndarray, np.ndarray] | ImageDecodeError]:
    """:func:`load_image` of every path, in order: an array (with ``cells``, a pair of
    arrays, as :func:`load_image` gives), or the file's error.

    With ``device_decoder`` (:func:`nvjpeg_decoder`), large plain JPEGs
    (:func:`goes_to_device`) are decoded by it together, the rest here; if the device
    fails on the batch, each of its files is read by :func:`load_image`, so a broken
    file is skipped with the same reason either way.
    """
    names = [os.fspath(p) for p in paths]
    out: list[np.ndarray | tuple[np.ndarray, np.ndarray] | ImageDecodeError | None] = \
        [None] * len(names)
    device = ([i for i, p in enumerate(names) if goes_to_device(p, max_pixels)]
              if device_decoder is not None else [])
    if device:
        try:
            for i, pixels in zip(device, device_decoder([names[i] for i in device], size),
                                 strict=True):
                # the device gives only the resized picture: its cells are of that
                out[i] = (pixels, _box_cells(Image.fromarray(pixels), cells)) if cells \
                    else pixels
        except Exception:  # a file the device refuses: the CPU says why, or reads it
            pass
    for i, path in enumerate(names):
        if out[i] is None:
            try:
                out[i] = load_image(path, size, max_pixels=max_pixels, cells=cells)
            except ImageDecodeError as exc:
                out[i] = exc
    return out  # type: ignore[return-value]


# Truncated files must fail, not decode with a grey tail.
ImageFile.LOAD_TRUNCATED_IMAGES = False
