"""What a file declares about its origin (C2PA, IPTC XMP), beside P(fake): the reader, predict, the API, serve."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from deepfake import DeepfakeClassifier
from deepfake.__main__ import main as deepfake_main
from deepfake.data import provenance
from deepfake.data.audit import audit_samples, format_audit
from deepfake.data.provenance import read_provenance

from .conftest import labelled_image
from .provenance_cases import EXPECTED, GENERATOR, created, jpeg_bytes, sign, write_cases, xmp_packet
from .test_serve import _browser, post, server  # noqa: F401 -- server: the fixture, used by name

pytest.importorskip("c2pa", reason="c2pa-python is not installed (pip install -e .[dev])")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("provenance") / "cases")


def test_each_case_gets_its_word_and_the_manifests_fields(cases):
    read = {name: read_provenance(path) for name, path in cases.items()}
    assert {name: p.summary for name, p in read.items()} == EXPECTED
    signed = read["generated_signed.jpg"]
    assert (signed.c2pa, signed.validation, signed.failures) == (True, "unknown-issuer", ())
    assert (signed.claim_generator, signed.issuer, signed.source_type) == (GENERATOR, "C2PA Test Signing Cert",
                                                                           "trainedAlgorithmicMedia")
    repainted = read["generated_signed_then_repainted.jpg"]
    assert repainted.validation == "invalid" and "assertion.dataHash.mismatch" in repainted.failures
    xmp = read["iptc_xmp_generated.jpg"]
    assert (xmp.c2pa, xmp.validation, xmp.iptc_source_type) == (False, None, "trainedAlgorithmicMedia")
    assert read["plain.jpg"] == provenance.Provenance("none")
    for name in ("corrupt_manifest.jpg", "truncated_manifest.jpg"):
        assert read[name].c2pa and read[name].reason.startswith("C2PA manifest: "), read[name]


def test_a_file_over_the_read_limit_is_unreadable_with_the_limit_named(cases):
    path = cases["generated_signed.jpg"]
    result = read_provenance(path, max_bytes=path.stat().st_size - 1)
    assert result.summary == "unreadable" and f"over the provenance read limit of {path.stat().st_size - 1}" in result.reason
    assert read_provenance(path, max_bytes=path.stat().st_size).summary == "declared-generated"


def test_without_c2pa_python_a_manifest_says_how_to_install_it_and_xmp_is_still_read(cases, monkeypatch):
    monkeypatch.setattr(provenance, "_c2pa", lambda: None)
    signed = read_provenance(cases["generated_signed.jpg"])
    assert signed.summary == "unreadable" and provenance.INSTALL_HINT in signed.reason
    assert read_provenance(cases["iptc_xmp_generated.jpg"]).summary == "declared-generated"
    assert read_provenance(cases["plain.jpg"]).summary == "none"


def _predict_json(run, folder, out, *extra) -> dict:
    assert deepfake_main(["predict", str(folder), "--checkpoint", str(run), "--output", str(out),
                          "--num_workers", "0", "--quiet", *extra]) == 0
    return {p["path"].rsplit("/", 1)[-1]: p for p in json.loads(out.read_text())["predictions"]}


def test_predict_scores_every_case_and_writes_its_word_in_table_json_and_csv(cases, trained_run, tmp_path, capsys):
    folder = cases["plain.jpg"].parent
    with_provenance = _predict_json(trained_run["run"], folder, tmp_path / "with.json")
    printed = capsys.readouterr().out
    assert all(p["probability"] is not None for p in with_provenance.values())
    assert {name: p["provenance"]["summary"] for name, p in with_provenance.items()} == EXPECTED
    assert "provenance" in printed.splitlines()[0]
    for name, word in EXPECTED.items():
        row = next(line for line in printed.splitlines() if name in line)
        assert word in row, row
    assert f"({GENERATOR})" in next(line for line in printed.splitlines() if "generated_signed.jpg" in line)

    # The read never changes P(fake): the same numbers without it, and no provenance field or column.
    without = _predict_json(trained_run["run"], folder, tmp_path / "without.json", "--no-provenance")
    assert "provenance" not in capsys.readouterr().out.splitlines()[0]
    assert {n: p["probability"] for n, p in without.items()} == {n: p["probability"] for n, p in with_provenance.items()}
    assert all("provenance" not in p for p in without.values())

    out = tmp_path / "scores.csv"
    assert deepfake_main(["predict", str(folder), "--checkpoint", str(trained_run["run"]), "--output", str(out),
                          "--num_workers", "0", "--quiet"]) == 0
    with open(out, newline="") as handle:
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(handle)}
    assert {name: r["provenance"] for name, r in rows.items()} == EXPECTED
    repainted = rows["generated_signed_then_repainted.jpg"]
    assert repainted["c2pa_validation"] == "invalid" and "assertion.dataHash.mismatch" in repainted["c2pa_failures"]
    assert rows["generated_signed.jpg"]["signer_issuer"] == "C2PA Test Signing Cert"


def test_api_prediction_carries_each_cases_word_and_none_for_an_in_memory_image(cases, trained_run):
    classifier = DeepfakeClassifier.from_pretrained(trained_run["run"])
    names = list(cases)
    results = classifier.predict([cases[n] for n in names])
    assert {n: p.provenance.summary for n, p in zip(names, results)} == EXPECTED
    assert all(p.probability is not None for p in results)
    assert classifier.predict(cases["plain.jpg"], provenance=False).provenance is None
    in_memory = classifier.predict(labelled_image(np.random.default_rng(0), True, 96))
    assert in_memory.probability is not None and in_memory.provenance is None


def test_serve_answers_each_cases_word_beside_its_probability(server, cases):  # noqa: F811
    answers = [post(server["url"], [(name, path.read_bytes())]) for name, path in cases.items()]  # 1 MB a request
    assert [status for status, _ in answers] == [200] * len(cases)
    got = {p["path"]: p for _, answer in answers for p in answer["predictions"]}
    assert {name: p["provenance"]["summary"] for name, p in got.items()} == EXPECTED
    assert all(p["probability"] is not None for p in got.values())
    assert got["generated_signed.jpg"]["provenance"]["claim_generator"] == GENERATOR


def test_page_in_headless_chromium_shows_the_provenance_badge(server, cases):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chosen = ["generated_signed.jpg", "generated_signed_then_repainted.jpg", "plain.jpg", "iptc_xmp_generated.jpg"]
    browser = _browser()
    try:
        browser.get(server["url"] + "/")
        WebDriverWait(browser, 60).until(lambda b: "P(fake) >" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "files").send_keys("\n".join(str(cases[n]) for n in chosen))
        WebDriverWait(browser, 120).until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, ".result[data-state=done]")) == len(chosen))
        cards = {c.get_attribute("data-name"): c for c in browser.find_elements(By.CSS_SELECTOR, ".result")}
        badges = {name: [b.text for b in card.find_elements(By.CSS_SELECTOR, ".badge")] for name, card in cards.items()}
    finally:
        browser.quit()
    assert badges["generated_signed.jpg"] == [f"declares: generated by {GENERATOR}, signature valid (issuer on no trust list)"]
    assert badges["generated_signed_then_repainted.jpg"] == ["signature broken"]
    assert badges["plain.jpg"] == []
    assert badges["iptc_xmp_generated.jpg"] == ["declares: generated (IPTC metadata, unsigned)"]


def _declaring_set(folder, rng) -> list[tuple[str, str, int]]:
    """Six reals that declare nothing but one (a generator: against its label); six fakes that all declare one."""
    items = []
    for i in range(6):
        real, fake = folder / "0_real" / f"{i}.jpg", folder / "1_fake" / f"{i}.jpg"
        real.parent.mkdir(parents=True, exist_ok=True), fake.parent.mkdir(parents=True, exist_ok=True)
        real.write_bytes(jpeg_bytes(labelled_image(rng, False, 64), **({"xmp": xmp_packet("trainedAlgorithmicMedia")}
                                                                        if i == 5 else {})))
        image = jpeg_bytes(labelled_image(rng, True, 64))
        fake.write_bytes(sign(image, created("trainedAlgorithmicMedia")) if i % 2 else
                         jpeg_bytes(labelled_image(rng, True, 64), xmp=xmp_packet("compositeWithTrainedAlgorithmicMedia")))
        items += [(str(real), "gen", 0), (str(fake), "gen", 1)]
    return items


def test_audit_flags_a_set_whose_fakes_all_declare_a_generator_and_names_the_real_that_contradicts_its_label(tmp_path):
    report = audit_samples(_declaring_set(tmp_path, np.random.default_rng(0)))
    stats = report["domains"]["gen"]
    assert (stats["fake"]["declares_generated"], stats["real"]["declares_generated"]) == (6, 1)
    assert (stats["real"]["contradicting"], stats["fake"]["contradicting"]) == (1, 0)
    assert stats["real"]["contradicting_examples"] == [str(tmp_path / "0_real" / "5.jpg")]
    flags = {f["property"]: f["message"] for f in report["flags"]}
    assert "a generator in 17% of reals and 100% of fakes" in flags["provenance"]
    assert "1 real declaring a generator" in flags["provenance-label"] and "0_real/5.jpg" in flags["provenance-label"]
    text = format_audit(report)
    assert "declares generated 6, captured 0" in text and "declared origin" in text


def test_audit_flags_no_declared_origin_when_neither_class_declares_one(tmp_path):
    rng = np.random.default_rng(1)
    items = []
    for label in (0, 1):
        for i in range(4):
            path = tmp_path / str(label) / f"{i}.jpg"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(jpeg_bytes(labelled_image(rng, bool(label), 64)))
            items.append((str(path), "gen", label))
    report = audit_samples(items)
    assert not [f for f in report["flags"] if f["property"].startswith("provenance")]


def test_a_manifest_whose_signer_is_on_the_trust_list_is_valid_and_one_off_it_is_unknown_issuer():
    def store(state: str, codes: tuple[str, ...]) -> dict:
        return {"active_manifest": "m", "validation_state": state, "validation_status": [{"code": c} for c in codes],
                "manifests": {"m": {"claim_generator_info": [{"name": "Cam"}], "signature_info": {"issuer": "Maker"},
                                    "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [
                                        {"action": "c2pa.created", "digitalSourceType": "x/digitalCapture"}]}}]}}}

    trusted = provenance.parse_manifest_store(store("Trusted", ()))
    assert trusted == ("valid", (), "Cam", "Maker", "digitalCapture", False)
    assert provenance.parse_manifest_store(store("Valid", (provenance.UNTRUSTED,)))[:2] == ("unknown-issuer", ())
    assert provenance.parse_manifest_store(store("Invalid", (provenance.UNTRUSTED, "claimSignature.mismatch")))[:2] == (
        "invalid", ("claimSignature.mismatch",))


def test_the_manifest_stores_bytes_inside_no_manifest_read_as_none_not_unreadable(tmp_path):
    path = tmp_path / "comment.jpg"
    # A JPEG comment that happens to hold the bytes the reader looks for first; c2pa finds no manifest.
    path.write_bytes(jpeg_bytes(labelled_image(np.random.default_rng(2), False, 64), comment=provenance.C2PA_STORE * 4))
    assert provenance.C2PA_STORE in path.read_bytes()
    assert read_provenance(path) == provenance.Provenance("none")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_photo_without_a_manifest_is_read_for_its_metadata_not_its_pixels(tmp_path, monkeypatch, fmt):
    from PIL import Image, PngImagePlugin

    path = tmp_path / f"photo.{fmt.lower()}"
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    packet = xmp_packet("trainedAlgorithmicMedia")
    if fmt == "PNG":  # Pillow writes a PNG's XMP as the iTXt chunk XMP readers look for
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", packet.decode("utf-8"))
        Image.fromarray(noise).save(path, fmt, pnginfo=info)
    else:
        Image.fromarray(noise).save(path, fmt, xmp=packet)
    assert path.stat().st_size > 1_000_000
    read = []

    class Counted:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, n=-1):
            data = self.handle.read(n)
            read.append(len(data))
            return data

        def seek(self, *args):
            return self.handle.seek(*args)

    monkeypatch.setattr(provenance, "open", lambda p, mode: Counted(open(p, mode)), raising=False)
    assert read_provenance(path).summary == "declared-generated"
    assert sum(read) < 20_000  # the XMP packet and the headers, not the pixels
