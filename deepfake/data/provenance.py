"""What a file says about where it came from: its C2PA manifest and its IPTC digital source type.

Shown beside P(fake), never mixed into it. For each file: whether it embeds a C2PA manifest
(Content Credentials), the manifest's validation state (``valid``; ``unknown-issuer``: intact,
but signed by a certificate on no trust list this reader was given; ``invalid``, with the
failure codes), its claim generator, who signed it (c2pa's ``issuer``), the digital source type
of its actions, and the IPTC digital source type of the file's XMP packet (unsigned). The
``summary`` is one word: ``declared-generated``, ``declared-captured``, ``edited``, ``none``,
``invalid`` or ``unreadable`` (with ``reason``).

A declaration is a statement by whoever signed or wrote the file: a valid signature proves who
signed, not that what they signed is true, and a file without one proves nothing (metadata is
stripped by most uploads, screenshots and re-encodes). Manifests are read by ``c2pa-python``
(the ``provenance`` extra); without it a file that embeds one says how to install it, and the
XMP declaration is still read. At most ``max_bytes`` of a file are read, once (the default:
``DEFAULT_PROVENANCE_MAX_BYTES`` in :mod:`deepfake.config`); no manifest is fetched from the network.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from deepfake.config import DEFAULT_PROVENANCE_MAX_BYTES

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'deepfake[provenance]'"
SUMMARIES = ("declared-generated", "declared-captured", "edited", "none", "invalid", "unreadable")
# IPTC's digital source type vocabulary (http://cv.iptc.org/newscodes/digitalsourcetype/), by what it declares.
GENERATED_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", "algorithmicMedia",
                             "compositeSynthetic"})
CAPTURED_TYPES = frozenset({"digitalCapture", "computationalCapture", "negativeFilm", "positiveFilm", "print",
                            "compositeCapture"})
EDITED_TYPES = frozenset({"humanEdits", "minorHumanEdits", "algorithmicallyEnhanced"})  # others (digitalArt, ...): no summary
# Actions that only say the file was made or opened; any other action is an edit.
NEUTRAL_ACTIONS = frozenset({"c2pa.created", "c2pa.opened", "c2pa.published", "c2pa.converted", "c2pa.placed"})
# A JUMBF description box labelled "c2pa" with the C2PA manifest store's UUID: the embedded store's signature.
C2PA_STORE = b"jumdc2pa\x00\x11\x00\x10"
UNTRUSTED = "signingCredential.untrusted"
XMP_START, XMP_END = b"<x:xmpmeta", b"</x:xmpmeta>"
PNG_XMP = b"iTXtXML:com.adobe.xmp\x00"  # a PNG's XMP chunk: keyword, then its compression flag
MAX_XMP_PACKET = 1 << 20
# The IPTC property as an attribute, an element or an rdf:resource, under whatever prefix the packet binds.
XMP_SOURCE_TYPE = re.compile(rb"DigitalSourceType\s*(?:=\s*[\"']|>|\s+rdf:resource\s*=\s*[\"'])\s*([^\"'<\s]+)")
MAGIC_MIME = ((b"\xff\xd8", "image/jpeg"), (b"\x89PNG", "image/png"), (b"II*\x00", "image/tiff"),
              (b"MM\x00*", "image/tiff"), (b"GIF8", "image/gif"))
FTYP_MIME = {b"avif": "image/avif", b"heic": "image/heic", b"heix": "image/heic", b"mif1": "image/heif"}


@dataclass(frozen=True)
class Provenance:
    """What one file declares about its origin (see the module's docstring for each field)."""

    summary: str
    c2pa: bool = False
    validation: str | None = None  # valid | unknown-issuer | invalid; None without a manifest read
    failures: tuple[str, ...] = ()
    claim_generator: str | None = None
    issuer: str | None = None
    source_type: str | None = None  # the C2PA actions' digital source type (the last segment of its IPTC URI)
    iptc_source_type: str | None = None  # the XMP packet's Iptc4xmpExt:DigitalSourceType
    reason: str = ""

    def to_dict(self) -> dict:
        """The JSON form (``failures`` as a list)."""
        record = asdict(self)
        record["failures"] = list(self.failures)
        return record

    def describe(self) -> str:
        """One short phrase: the summary word, with what declared it or why it could not be read."""
        if self.summary == "unreadable":
            return f"unreadable: {self.reason}"
        if self.summary == "invalid":
            return f"invalid ({', '.join(self.failures)})" if self.failures else "invalid"
        by = self.claim_generator if self.c2pa and self.claim_generator else ("IPTC XMP" if self.iptc_source_type else "")
        return f"{self.summary} ({by})" if by and self.summary != "none" else self.summary


# The flat (CSV) columns of a provenance record, by the field they come from.
FLAT_COLUMNS = {"provenance": "summary", "c2pa": "c2pa", "c2pa_validation": "validation", "c2pa_failures": "failures",
                "claim_generator": "claim_generator", "signer_issuer": "issuer", "c2pa_source_type": "source_type",
                "iptc_source_type": "iptc_source_type", "provenance_reason": "reason"}


def flat_record(p: Provenance | None) -> dict:
    """The CSV columns of ``p`` (all empty when provenance was not read)."""
    if p is None:
        return dict.fromkeys(FLAT_COLUMNS, "")
    values = {col: getattr(p, name) for col, name in FLAT_COLUMNS.items()}
    values["c2pa_failures"] = " ".join(p.failures)
    return {k: ("" if v is None else v) for k, v in values.items()}


@functools.cache
def _c2pa():
    """The ``c2pa`` module and a reading context that never fetches (remote manifests, OCSP); ``None`` if absent."""
    try:
        import c2pa
    except ImportError:
        return None
    context = c2pa.Context.from_dict({"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}})
    return c2pa, context


def c2pa_available() -> bool:
    """Whether C2PA manifests can be read here (``c2pa-python`` installed)."""
    return _c2pa() is not None


def sniff_mime(data: bytes, path: str) -> str:
    """The MIME type c2pa reads ``data`` as: from its magic bytes, else from the file's extension."""
    for magic, mime in MAGIC_MIME:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp" and data[8:12] in FTYP_MIME:
        return FTYP_MIME[data[8:12]]
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return f"image/{'jpeg' if ext in ('jpg', 'jpe', 'jfif') else ext or 'unknown'}"


def _png_xmp(data: bytes) -> bytes:
    """A PNG's compressed XMP chunk, inflated (at most ``MAX_XMP_PACKET`` bytes); empty if it has none."""
    at = data.find(PNG_XMP) + len(PNG_XMP)
    if at < len(PNG_XMP) or data[at : at + 1] != b"\x01":
        return b""
    # After the flag and the method: a language tag and a translated keyword, each ended by a NUL.
    language_end = data.find(b"\x00", at + 2)
    text_start = data.find(b"\x00", language_end + 1) + 1 if language_end >= 0 else 0
    try:
        return zlib.decompressobj().decompress(data[text_start:], MAX_XMP_PACKET) if text_start else b""
    except zlib.error:
        return b""


def xmp_source_type(data: bytes) -> str | None:
    """The IPTC digital source type declared in ``data``'s XMP packets (the first found), or ``None``."""
    if data.startswith(b"\x89PNG"):
        data = _png_xmp(data) or data
    start = data.find(XMP_START)
    while start >= 0:
        end = data.find(XMP_END, start, start + MAX_XMP_PACKET)
        packet = data[start : end if end >= 0 else start + MAX_XMP_PACKET]
        match = XMP_SOURCE_TYPE.search(packet)
        if match:
            return match.group(1).decode("utf-8", "replace").rstrip("/").rsplit("/", 1)[-1]
        start = data.find(XMP_START, start + len(XMP_START))
    return None


def _source_kind(source_type: str | None) -> str | None:
    if source_type in GENERATED_TYPES:
        return "declared-generated"
    if source_type in CAPTURED_TYPES:
        return "declared-captured"
    if source_type in EDITED_TYPES:
        return "edited"
    return None


def _actions(manifest: dict) -> list[dict]:
    return [a for assertion in manifest.get("assertions", []) if str(assertion.get("label", "")).startswith("c2pa.actions")
            for a in (assertion.get("data") or {}).get("actions", []) if isinstance(a, dict)]


def _generator(manifest: dict) -> str | None:
    info = manifest.get("claim_generator_info") or []
    if info and isinstance(info[0], dict) and info[0].get("name"):
        return " ".join(str(info[0][k]) for k in ("name", "version") if info[0].get(k))
    return manifest.get("claim_generator")


def parse_manifest_store(store: dict) -> tuple[str, tuple[str, ...], str | None, str | None, str | None, bool]:
    """``(validation, failures, claim generator, issuer, source type, edited)`` of a c2pa Reader's JSON."""
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    codes = tuple(s.get("code", "") for s in store.get("validation_status") or [])
    failures = tuple(c for c in codes if c != UNTRUSTED)
    state = str(store.get("validation_state", "")).lower()
    if state == "invalid" or (state not in ("valid", "trusted") and failures):
        validation = "invalid"
    else:
        validation = "unknown-issuer" if UNTRUSTED in codes or state == "valid" else "valid"
    actions = _actions(manifest)
    types = [str(a["digitalSourceType"]).rstrip("/").rsplit("/", 1)[-1] for a in actions if a.get("digitalSourceType")]
    # A generated part anywhere makes the whole declare generation; else the creation's type.
    source = next((t for t in types if t in GENERATED_TYPES), types[0] if types else None)
    edited = any(a.get("action") not in NEUTRAL_ACTIONS for a in actions)
    issuer = (manifest.get("signature_info") or {}).get("issuer")
    return validation, failures if validation == "invalid" else (), _generator(manifest), issuer, source, edited


def _read_manifest(data: bytes, path: str, iptc: str | None) -> Provenance:
    """The provenance of a file that embeds a C2PA manifest store."""
    lib = _c2pa()
    if lib is None:
        return Provenance("unreadable", c2pa=True, iptc_source_type=iptc,
                          reason=f"has a C2PA manifest; reading it needs c2pa-python: {INSTALL_HINT}")
    c2pa, context = lib
    try:
        reader = c2pa.Reader(sniff_mime(data, path), io.BytesIO(data), context=context)
        try:
            store = json.loads(reader.json())
        finally:
            reader.close()
        validation, failures, generator, issuer, source, edited = parse_manifest_store(store)
    except Exception as exc:  # noqa: BLE001 -- c2pa raises its own error per malformed box; none may stop scoring
        reason = str(exc).strip() or type(exc).__name__
        if "ManifestNotFound" in type(exc).__name__:  # the store's bytes seen by chance, in no box c2pa reads
            return Provenance(_source_kind(iptc) or "none", iptc_source_type=iptc)
        log.debug("%s: C2PA manifest unreadable: %s", path, reason)
        return Provenance("unreadable", c2pa=True, iptc_source_type=iptc, reason=f"C2PA manifest: {reason}"[:300])
    if validation == "invalid":
        summary = "invalid"
    else:
        summary = _source_kind(source) or _source_kind(iptc) or ("edited" if edited else "none")
    return Provenance(summary, True, validation, failures, generator, issuer, source, iptc)


def _jpeg_metadata(f) -> bytes:
    """A JPEG's marker segments up to its first scan (where its XMP and C2PA segments are), the pixels unread."""
    out = [f.read(2)]
    while True:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0xFF or head[1] in (0xDA, 0xD9):  # start of scan, end of image
            return b"".join(out)
        body = f.read(max(0, int.from_bytes(head[2:], "big") - 2))
        out += [head, body]


def _png_metadata(f) -> bytes:
    """A PNG's signature and every chunk but the pixel data (``IDAT``, skipped by seeking), as a chunk stream."""
    out = [f.read(8)]
    while True:
        head = f.read(8)
        if len(head) < 8:
            return b"".join(out)
        length, kind = int.from_bytes(head[:4], "big"), head[4:]
        if kind == b"IDAT":
            f.seek(length + 4, os.SEEK_CUR)
            continue
        out += [head, f.read(length + 4)]
        if kind == b"IEND":
            return b"".join(out)


def _metadata(f) -> bytes | None:
    """The bytes of a JPEG or PNG that can hold a declaration (its pixel data is not read); None for other formats."""
    magic = f.read(8)
    f.seek(0)
    if magic.startswith(b"\xff\xd8"):
        return _jpeg_metadata(f)
    if magic.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_metadata(f)
    return None


def read_provenance(path: str | os.PathLike, max_bytes: int = DEFAULT_PROVENANCE_MAX_BYTES) -> Provenance:
    """What the file at ``path`` declares about its origin; never raises for a bad file.

    Of a JPEG or PNG only the segments that can hold XMP or a C2PA manifest are read, unless it has
    a manifest: c2pa then checks its signature's hash of the whole file, which is read (at most
    ``max_bytes``). Other formats are read whole.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            return Provenance("unreadable", reason=f"{size} bytes, over the provenance read limit of {max_bytes}")
        with open(path, "rb") as f:
            data = _metadata(f)
            if data is None or C2PA_STORE in data:
                f.seek(0)
                data = f.read(max_bytes + 1)
    except OSError as exc:
        return Provenance("unreadable", reason=exc.strerror or type(exc).__name__)
    if len(data) > max_bytes:  # grew since it was sized
        return Provenance("unreadable", reason=f"over the provenance read limit of {max_bytes} bytes")
    iptc = xmp_source_type(data)
    if C2PA_STORE in data:
        return _read_manifest(data, path, iptc)
    return Provenance(_source_kind(iptc) or "none", iptc_source_type=iptc)


def read_many(paths: list[str | os.PathLike | None], max_bytes: int = DEFAULT_PROVENANCE_MAX_BYTES,
              threads: int | None = None) -> list[Provenance | None]:
    """:func:`read_provenance` of each path (``None`` for ``None``), in order, on a few threads.

    The reads wait on the disk and on c2pa's native code, both outside the GIL, so threads overlap
    them (a folder of 720k images is not read one file at a time after its scoring).
    """
    if not any(p is not None for p in paths):
        return [None] * len(paths)
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda p: None if p is None else read_provenance(p, max_bytes), paths))
