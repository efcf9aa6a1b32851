"""Uploads of ``deepfake serve``: a multipart body onto disk, and each file's size from its header.

The body is parsed as it streams in (its size and time are capped by
``guards.RequestGuard``). Each uploaded file keeps at most its first :data:`SPOOL_BYTES` in
memory; the rest goes to an anonymous temporary file as it arrives. The files are then
copied into the request's private folder, named by position (the client's name is only
echoed back), and each one's size is read from its header, opened with the loader's format
list: nothing is decoded here.
A file that would take the request past ``max_request_pixels`` is refused with that reason;
one the header read cannot size is left for the loader to refuse with its own reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from deepfake.config import ServeConfig
from deepfake.data.image_io import IMAGE_FORMATS

SPOOL_BYTES = 64 << 10
MAX_NAME = 255


class UploadRefused(Exception):
    """The request as a whole is refused: ``status`` and a ``detail`` for the client."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _SpoolingParser(MultiPartParser):
    spool_max_size = SPOOL_BYTES  # Starlette's default keeps 1 MB of every file in memory


@dataclass
class Upload:
    """One uploaded file: the client's name, where it lies here, its pixels, or why it is refused."""

    name: str
    path: str
    pixels: int = 0
    skipped: str = ""


def client_name(filename: str | None, index: int) -> str:
    """The uploaded file's base name (never a client's directory), or ``<upload i>``."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:MAX_NAME] or f"<upload {index}>"


def _suffix(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return suffix if suffix.isascii() and suffix[1:].isalnum() and len(suffix) <= 6 else ""


def header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file's header, or ``None`` when it is no image the loader opens."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                return image.size
    except Exception:  # the loader gives the reason; this is only a size
        return None


def apply_pixel_budget(uploads: list[Upload], config: ServeConfig) -> None:
    """Set each upload's decoded size; refuse the ones past the request's pixel budget."""
    total = 0
    for upload in uploads:
        size = header_size(upload.path)
        if size is None or size[0] * size[1] > config.max_pixels:
            continue  # refused by the loader before any pixel is decoded
        pixels = size[0] * size[1]
        if total + pixels > config.max_request_pixels:
            upload.skipped = (f"over the request's pixel budget ({size[0]}x{size[1]} would bring it to "
                              f"{total + pixels} > max_request_pixels {config.max_request_pixels}); send it alone")
            continue
        upload.pixels = pixels
        total += pixels


def _copy_out(file, path: str) -> None:
    file.seek(0)
    with open(path, "wb") as handle:
        shutil.copyfileobj(file, handle, 1 << 20)


async def _parse(request: Request, config: ServeConfig):
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadRefused(422, "expected a multipart/form-data body with one or more `files`")
    parser = _SpoolingParser(request.headers, request.stream(), max_files=config.max_files, max_fields=16,
                             max_part_size=SPOOL_BYTES)
    try:
        return await parser.parse()
    except ClientDisconnect:
        raise UploadRefused(400, "the client disconnected before its upload was complete") from None
    except MultiPartException as exc:
        if "Too many files" in exc.message:
            raise UploadRefused(413, f"too many files: the limit is {config.max_files} per request "
                                     f"(--max_files)") from None
        raise UploadRefused(400, f"malformed multipart body: {exc.message}") from None


async def receive_uploads(request: Request, folder: str, config: ServeConfig) -> list[Upload]:
    """The request's ``files`` written into ``folder``, sized, and refused past the pixel budget."""
    form = await _parse(request, config)
    try:
        files = [value for key, value in form.multi_items() if key == "files" and isinstance(value, UploadFile)]
        if not files:
            raise UploadRefused(422, "no files: send one or more images as the multipart field `files`")
        uploads = []
        for i, upload in enumerate(files):
            name = client_name(upload.filename, i)
            path = os.path.join(folder, f"{i:04d}{_suffix(name)}")
            await asyncio.to_thread(_copy_out, upload.file, path)
            uploads.append(Upload(name, path))
    finally:
        await form.close()
    await asyncio.to_thread(apply_pixel_budget, uploads, config)
    return uploads
