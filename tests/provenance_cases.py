"""Images that declare their origin, made here: C2PA manifests signed with the C2PA test certificate
(``tests/c2pa-test-certs/``), an IPTC XMP declaration, and damaged manifests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import labelled_image

CERTS = Path(__file__).parent / "c2pa-test-certs"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
GENERATOR = "Test Image Generator 2.1"
# The word each case's provenance must get; every one of them is scored all the same.
EXPECTED = {
    "generated_signed.jpg": "declared-generated",
    "generated_signed_then_repainted.jpg": "invalid",
    "iptc_xmp_generated.jpg": "declared-generated",
    "plain.jpg": "none",
    "corrupt_manifest.jpg": "unreadable",
    "truncated_manifest.jpg": "unreadable",
    "captured_signed.jpg": "declared-captured",
    "edited_signed.jpg": "edited",
}


def xmp_packet(source_type: str) -> bytes:
    """An XMP packet declaring the IPTC digital source type ``source_type`` (unsigned)."""
    return (f'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            f'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
            f'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
            f'Iptc4xmpExt:DigitalSourceType="{IPTC}{source_type}"/></rdf:RDF></x:xmpmeta>'
            f'<?xpacket end="w"?>').encode()


def jpeg_bytes(image: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92, **save)
    return buf.getvalue()


def _signer():
    c2pa = pytest.importorskip("c2pa", reason="c2pa-python is not installed (pip install -e .[dev])")
    info = c2pa.C2paSignerInfo(alg=b"es256", sign_cert=(CERTS / "es256_certs.pem").read_bytes(),
                               private_key=(CERTS / "es256_private.key").read_bytes(), ta_url=None)  # no timestamp server
    return c2pa, c2pa.Signer.from_info(info)


def sign(jpeg: bytes, actions: list[dict], generator: str = GENERATOR, parent: bytes | None = None) -> bytes:
    """``jpeg`` with a C2PA manifest of ``actions`` signed by the test certificate (``parent``: an ingredient)."""
    c2pa, signer = _signer()
    name, version = generator.rsplit(" ", 1)
    builder = c2pa.Builder({"claim_generator_info": [{"name": name, "version": version}],
                            "assertions": [{"label": "c2pa.actions", "data": {"actions": actions}}]})
    if parent is not None:
        builder.add_ingredient({"title": "parent.jpg", "relationship": "parentOf", "label": "parent"}, "image/jpeg",
                               io.BytesIO(parent))
    out = io.BytesIO()
    builder.sign(signer, "image/jpeg", io.BytesIO(jpeg), out)
    signer.close()
    return out.getvalue()


def created(source_type: str) -> list[dict]:
    return [{"action": "c2pa.created", "digitalSourceType": IPTC + source_type}]


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """``(marker, start, end)`` of each header segment of a JPEG, up to its first scan (SOS included)."""
    segments, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        segments.append((marker, at, at + 2 + length))
        if marker == 0xDA:
            break
        at += 2 + length
    return segments


def repaint(data: bytes) -> bytes:
    """The same file with a few pixels changed after signing: a bit of the entropy-coded scan flipped."""
    scan_start = jpeg_segments(data)[-1][2]
    out = bytearray(data)
    at = scan_start + (len(data) - scan_start) // 2
    while out[at] == 0xFF or out[at - 1] == 0xFF or out[at] ^ 0x01 == 0xFF:
        at += 1
    out[at] ^= 0x01
    return bytes(out)


def manifest_segments(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of the APP11 segments holding the C2PA manifest store (JUMBF)."""
    return [(s, e) for m, s, e in jpeg_segments(data) if m == 0xEB]


def corrupt_manifest(data: bytes) -> bytes:
    """The manifest store's box headers overwritten (its structure broken, not just a hash); the image is intact."""
    at = data.index(b"jumb", manifest_segments(data)[0][0]) + 96
    return data[:at] + b"\x41" * 256 + data[at + 256 :]


def truncate_manifest(data: bytes) -> bytes:
    """The manifest store cut short: its last APP11 segment dropped; the image is intact."""
    start, end = manifest_segments(data)[-1]
    return data[:start] + data[end:]


def write_cases(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Each case of :data:`EXPECTED` as a file in ``folder``: the same kind of image, different declarations."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    plain = [jpeg_bytes(labelled_image(rng, fake, 96)) for fake in (True, False, True)]
    generated = sign(plain[0], created("trainedAlgorithmicMedia"))
    files = {
        "generated_signed.jpg": generated,
        "generated_signed_then_repainted.jpg": repaint(generated),
        "iptc_xmp_generated.jpg": jpeg_bytes(labelled_image(rng, True, 96), xmp=xmp_packet("trainedAlgorithmicMedia")),
        "plain.jpg": plain[1],
        "corrupt_manifest.jpg": corrupt_manifest(generated),
        "truncated_manifest.jpg": truncate_manifest(generated),
        "captured_signed.jpg": sign(plain[1], created("digitalCapture"), generator="Test Camera 1.0"),
        "edited_signed.jpg": sign(plain[2], [{"action": "c2pa.opened", "parameters": {"ingredientIds": ["parent"]}},
                                             {"action": "c2pa.color_adjustments"}], "Test Editor 3.0", parent=plain[2]),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}
