"""Reading images from disk: one loader for training, evaluation and prediction.

Every file either becomes an RGB ``PIL.Image`` or raises :class:`ImageSkipped` with a
short reason; nothing else escapes, so a run over a folder of odd files goes on. Only the
formats of :data:`IMAGE_FORMATS` are opened, whatever a file is named: Pillow would hand
an EPS, PS or PDF file to Ghostscript, an external program, and a file is identified by
its content, so an EPS named ``photo.png`` would otherwise get there.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepfake.config import DEFAULT_MAX_PIXELS

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".jfif", ".ppm", ".pgm"}
)

# Pillow's decoders for the extensions above (MPO, a camera JPEG with a second picture, comes
# through JPEG's). Nothing here runs an external program.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "PPM")

# Pillow's limit is process-wide state that belongs to the application. It is never
# changed for good: a --max_pixels above it lifts it for the duration of one open only.
_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_allows(max_pixels: int):
    """Let Pillow open images up to ``max_pixels`` (our own check names the limit), then restore."""
    limit = Image.MAX_IMAGE_PIXELS
    # Pillow raises above twice its limit and only warns between (warnings are silenced here).
    if limit is None or max_pixels <= 2 * limit:
        yield
        return
    with _PILLOW_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


class ImageSkipped(Exception):
    """A file that cannot be scored; ``reason`` says why in a few words."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{os.fsdecode(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether a file name has an image extension."""
    # os.path, not pathlib: this runs once per file of a 720k-image scan.
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, rescaling high-bit-depth data instead of clipping it."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        data = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            # Float images come either in [0, 1] or in [0, 255].
            scale = 255.0 if data.size and np.nanmax(data) <= 1.0 else 1.0
            data = data * scale
        elif data.size and data.max() > 255:
            data = data / 257.0  # 16-bit range onto 8 bits
        data = np.nan_to_num(np.clip(np.rint(data), 0, 255)).astype(np.uint8)
        return Image.fromarray(data, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    # Alpha is dropped, as the reference pipelines' ``convert("RGB")`` does.
    return image.convert("RGB")


def reduce_to_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """Shrink by the largest integer factor that keeps the short side >= ``short_side`` (uint8 box filter)."""
    factor = min(image.size) // short_side
    return image.reduce(factor) if factor >= 2 else image


def _check_file(path: str | os.PathLike) -> None:
    """Refuse what is no image file before Pillow opens it: broken or looping links, folders, empty files."""
    if os.path.islink(path) and not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ImageSkipped(path, "symlink loop") from None
        raise ImageSkipped(path, "broken symlink")
    if os.path.isdir(path):
        raise ImageSkipped(path, "is a directory")
    if os.path.getsize(path) == 0:
        raise ImageSkipped(path, "empty file (0 bytes)")


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_to: int | None = None,
               exif_transpose: bool = True) -> Image.Image:
    """Open ``path`` as an RGB image with EXIF orientation applied (first frame of animations).

    ``exif_transpose=False`` leaves the pixels as stored, as the published test scripts'
    ``Image.open(path).convert("RGB")`` does (``--protocol``).

    ``reduce_to`` (the fast decode path) lets the decoder shrink the image while its short
    side stays >= ``reduce_to``: a JPEG decodes at 1/2, 1/4 or 1/8 scale (DCT draft), any
    other image is reduced by an integer factor in uint8. Raises :class:`ImageSkipped` for
    anything that is not a readable image within ``max_pixels``.
    """
    try:
        _check_file(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _pillow_allows(max_pixels), Image.open(path, formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageSkipped(
                        path, f"too many pixels ({width}x{height} > max_pixels {max_pixels}); possible decompression bomb"
                    )
                if width < 1 or height < 1:
                    raise ImageSkipped(path, f"empty image ({width}x{height})")
                image.seek(0)
                if reduce_to and image.format == "JPEG":
                    scale = reduce_to / min(width, height)
                    image.draft(image.mode, (max(1, round(width * scale)), max(1, round(height * scale))))
                image.load()
                if reduce_to:
                    image = reduce_to_short_side(image, reduce_to)
                if exif_transpose:
                    # In place: an upright photo is not copied (a copy is 150 MB at 50 MP).
                    ImageOps.exif_transpose(image, in_place=True)
                return to_rgb(image)
    except ImageSkipped:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageSkipped(path, f"too many pixels for Pillow's limit: {exc}") from None
    except MemoryError:
        raise ImageSkipped(path, "out of memory while decoding") from None
    except UnidentifiedImageError:
        raise ImageSkipped(path, "not an image Pillow can read") from None
    except PermissionError:
        raise ImageSkipped(path, "permission denied") from None
    except FileNotFoundError:
        raise ImageSkipped(path, "file not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageSkipped(path, "symlink loop") from None
        message = str(exc)
        if "truncated" in message or "broken data stream" in message or "image file is" in message:
            raise ImageSkipped(path, "truncated or corrupt image data") from None
        raise ImageSkipped(path, f"unreadable: {message}") from None
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ImageSkipped(path, f"corrupt image: {exc}") from None
    except Exception as exc:  # any other failure of one file's decoder fails that file only
        raise ImageSkipped(path, f"unreadable: {type(exc).__name__}: {exc}") from None


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (recursive) and glob patterns -> (image files, [(input, reason)] not found).

    Files named explicitly are kept whatever their extension, so the loader can say what
    they are; files found in folders are kept when their extension is an image's.
    """
    found: list[str] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        if os.path.isdir(item):
            found.extend(walk_images(item))
        elif os.path.lexists(item):
            found.append(item)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                missing.append((item, "pattern matched nothing"))
            for match in matches:
                if os.path.isdir(match):
                    found.extend(walk_images(match))
                else:
                    found.append(match)
        else:
            missing.append((item, "no such file or directory"))
    # Keep the first occurrence of each path, in order.
    return list(dict.fromkeys(found)), missing


def walk_images(root: str | os.PathLike) -> list[str]:
    """Every file with an image extension under ``root``, sorted; symlinked files and folders included.

    Symlinked folders are followed once each: a link back to a folder already being walked
    (a loop) or already walked is left out.
    """
    out = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in seen)
        out.extend(os.path.join(dirpath, name) for name in sorted(filenames) if is_image_name(name))
    return out
