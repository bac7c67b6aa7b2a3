"""Decode image files of any common kind into fixed-size RGB arrays, refusing bad ones.

Every failure becomes an :class:`ImageDecodeError` with a short reason, so the
extraction loop can skip and report the file instead of crashing or writing a
garbage row.
"""

from __future__ import annotations

import io
import os
import warnings
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


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode (16-bit rescaled, transparency composited on white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: Pillow's convert("RGB") would clip to 255, so rescale first.
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 1.0
        arr = np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become white rather than whatever colour they hide.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(
    path: str | os.PathLike, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read an image file as an RGB ``uint8`` array of shape ``(size, size, 3)``.

    Grayscale, RGBA, CMYK, palette and 16-bit images are converted to 8-bit RGB;
    EXIF orientation is applied; resizing is bilinear to a square, ignoring aspect.

    Parameters
    ----------
    path : path-like
        The image file.
    size : int
        Side of the output square.
    max_pixels : int, default=89_478_485
        Images with more pixels are refused as possible decompression bombs.

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
    return _decode(path, path, size, max_pixels)


def decode_image(data: bytes, size: int, *, name: str = "upload",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Like :func:`load_image`, for image bytes held in memory (nothing touches the disk).

    Raises
    ------
    ImageDecodeError
        With ``path`` set to ``name``.
    """
    if len(data) == 0:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, size, max_pixels)


def _decode(source, path, size: int, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        path, f"refused: {width}x{height} pixels exceeds the limit of "
                        f"{max_pixels} (possible decompression bomb)")
                if img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
                    # Let libjpeg decode at a reduced scale when the image is much larger
                    # than needed: far less work, and the bilinear resize follows anyway.
                    img.draft("RGB", (size, size))
                img.load()
                if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                    # exif_transpose copies even upright images: call it only when needed
                    img = ImageOps.exif_transpose(img)
                rgb = img if img.mode == "RGB" else to_rgb(img)
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(path, f"refused: {exc}".split(". ")[0]) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(path, "not an image (format not recognised)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc) or exc.__class__.__name__
        reason = "truncated image" if "truncated" in text.lower() else f"unreadable image: {text}"
        raise ImageDecodeError(path, reason) from exc


# Truncated files must fail, not decode with a grey tail.
ImageFile.LOAD_TRUNCATED_IMAGES = False
