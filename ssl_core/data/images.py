"""One image loader for every input PatchLens accepts, and the resize policy encoders use.

`load_image` turns a path, raw bytes, a numpy array or a PIL image into an 8-bit RGB PIL image:

* EXIF orientation is applied (a photo taken sideways is shown upright).
* Colour modes are converted to RGB as follows:
    - palette (``P``) images are expanded through their palette; a transparent palette entry becomes alpha;
    - images with alpha (``RGBA``, ``LA``, ``PA``, transparent palettes) are composited onto a white background;
    - grayscale (``L``, ``1``) is replicated into three channels;
    - 16-bit and 32-bit integer images (``I;16``, ``I;16B``, ``I``) are scaled linearly from their full
      16-bit range (0..65535) to 0..255; 32-bit float images (``F``) are min-max scaled to 0..255;
    - CMYK, YCbCr, LAB and HSV go through PIL's own conversion (ICC profiles are not applied).
* Images of more than ``max_pixels`` pixels (default 64 megapixels) are refused from their header alone,
  before any pixel is decoded, which defuses decompression bombs.
* Empty, corrupt, truncated and non-image inputs raise `ImageLoadError`, whose message names the input
  and the reason. Nothing else is raised for bad image data.

`resize_policy` gives the size an image is processed at: the short side goes to the model's size, the
long side is capped at ``max_aspect`` times that size (a 100:1 panorama cannot exhaust memory; its short
side shrinks instead), and both sides are rounded to the nearest multiple of the patch size (at least
one patch). The aspect ratio is kept to within half a patch: no image is squashed.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ssl_core.errors import ImageLoadError

DEFAULT_MAX_PIXELS = 64_000_000
MAX_SHORT_SIDE = 1024  # px: the largest short side one forward pass runs at (--image-size, the app's size field);
# larger images are tiled (`ssl_core.features.tiling`)
ImageSource = Union[str, os.PathLike, bytes, bytearray, np.ndarray, Image.Image]


def describe_source(source: ImageSource) -> str:
    """A short human name for an image source, used in error messages and file listings."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {tuple(source.shape)} {source.dtype}>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    return f"<{type(source).__name__}>"


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Load any supported image source as an 8-bit RGB PIL image (see the module docstring)."""
    name = name or describe_source(source)
    if isinstance(source, np.ndarray):
        return _check_pixels(_array_to_image(source, name), max_pixels, name)
    if isinstance(source, Image.Image):
        _check_pixels(source, max_pixels, name)
        return _to_rgb(ImageOps.exif_transpose(source), name)
    if isinstance(source, (str, os.PathLike)):
        data = _read_local(Path(source), name)
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        raise ImageLoadError(name, f"unsupported input type {type(source).__name__}")
    if not data:
        raise ImageLoadError(name, "the file is empty")
    return decode_image_bytes(data, name, max_pixels)


def _read_local(path: Path, name: str) -> bytes:
    if not path.is_file():
        raise ImageLoadError(name, "no such file" if not path.exists() else "not a regular file")
    return path.read_bytes()


def is_url(source: str | os.PathLike) -> bool:
    """Whether a source names a file by URL (``s3://``, ``gs://``, ``https://``, ``file://`` ...), read with fsspec."""
    return isinstance(source, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", source) is not None


def read_image_bytes(source: str | os.PathLike) -> bytes:
    """The bytes of an image file: a local path or an fsspec URL. Unreadable: `ImageLoadError` naming it.

    Only the gallery pipelines call this with URLs (they come from listings the user asked for); `load_image`
    itself reads local paths only.
    """
    name = str(source)
    if not is_url(name):
        return _read_local(Path(source), name)
    import fsspec

    try:
        with fsspec.open(name, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageLoadError(name, "no such file") from None
    except (OSError, ValueError) as err:
        raise ImageLoadError(name, f"cannot read ({type(err).__name__}: {err})") from None


def content_fingerprint(data: bytes) -> str:
    """A content hash of a file's bytes: the same as `ssl_core.models.weights.file_fingerprint` of that file."""
    import hashlib

    return hashlib.blake2b(data, digest_size=12).hexdigest()


def decode_image_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, WebP, TIFF, ...) with the checks of `load_image`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image, max_pixels, name)  # header only: nothing decoded yet
            image.load()
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        kind = sniff_format(data)
        if kind:
            raise ImageLoadError(name, f"corrupt image data: it starts like a {kind} file but cannot be parsed") from None
        raise ImageLoadError(name, "not an image file (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # PIL's own guard, below ours
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = int(found.group(1)) if found else max_pixels + 1
        limit = f"the limit of {max_pixels:,}" if pixels > max_pixels else "what the image decoder accepts"
        raise ImageLoadError(name, f"too many pixels: {pixels:,} is over {limit}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = str(err) or type(err).__name__
        if "truncated" in reason or isinstance(err, EOFError):
            reason = f"the file is truncated ({reason})"
        raise ImageLoadError(name, f"corrupt image data: {reason}") from None
    image = ImageOps.exif_transpose(image)
    return _to_rgb(image, name)


_SIGNATURES = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF"}


def sniff_format(data: bytes) -> str | None:
    """The image format the first bytes announce (PNG, JPEG, GIF, BMP, TIFF, WebP), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _SIGNATURES.items() if data.startswith(magic)), None)


def _check_pixels(image: Image.Image, max_pixels: int, name: str) -> Image.Image:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageLoadError(name, f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLoadError(
            name, f"too many pixels: {width}x{height} = {width * height:,} is over the limit of {max_pixels:,}"
        )
    return image


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(pixels / 257.0, 0, 255).round().astype(np.uint8)).convert("RGB")
    if mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        span = float(pixels.max() - pixels.min()) or 1.0
        return Image.fromarray(((pixels - pixels.min()) / span * 255).round().astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageLoadError(name, f"cannot convert colour mode {mode} to RGB ({err})") from None


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(name, f"expected an array of shape [H, W], [H, W, 3] or [H, W, 4], got {array.shape}")
    if array.size == 0:
        raise ImageLoadError(name, "the array is empty")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = np.clip(array / 257.0, 0, 255).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError(name, "the array holds NaN or infinite values")
        pixels = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    elif array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    else:
        raise ImageLoadError(name, f"unsupported array dtype {array.dtype} (use uint8, uint16, bool or float in [0, 1])")
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return _to_rgb(image, name)


@dataclass(frozen=True)
class ResizePolicy:
    """How an image is resized before it reaches an encoder (see the module docstring)."""

    short_side: int = 224
    patch_size: int = 16
    max_aspect: float = 3.0

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The processed (width, height): multiples of the patch size, aspect ratio kept."""
        short, long = min(width, height), max(width, height)
        scale = self.short_side / short
        max_long = self.max_aspect * self.short_side
        if long * scale > max_long:
            scale = max_long / long
        p = self.patch_size
        new_w = max(p, int(round(width * scale / p)) * p)
        new_h = max(p, int(round(height * scale / p)) * p)
        return new_w, new_h

    def apply(self, image: Image.Image) -> Image.Image:
        size = self.target_size(*image.size)
        if size == image.size:
            return image
        return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def image_fingerprint(image: Image.Image) -> str:
    """A content hash of an RGB image's pixels and size (used as a cache key)."""
    import hashlib

    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.size}{image.mode}".encode())
    return digest.hexdigest()


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}


def expand_image_paths(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files as given, and folders searched recursively for image files (sorted, for stable order)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(path)
    return paths


def load_images_reporting(sources: list[ImageSource], max_pixels: int = DEFAULT_MAX_PIXELS,
                          ) -> tuple[list[tuple[str, Image.Image]], list[str]]:
    """Load what loads: ([(name, image)], ["name: reason" for every input that failed])."""
    loaded, failed = [], []
    for source in sources:
        try:
            loaded.append((describe_source(source), load_image(source, max_pixels)))
        except ImageLoadError as err:
            failed.append(str(err))
    return loaded, failed
