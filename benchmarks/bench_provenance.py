"""What reading provenance costs ``deepfake predict``: the scoring core with and without the read, side by side.

    python benchmarks/bench_provenance.py                      # 100 JPEGs of 1280x720, half signed
    python benchmarks/bench_provenance.py --n 30 --size 1920x1080 --signed 1.0

The photos are ``benchmarks/bench_spectrum.py``'s photo-like JPEGs; a share of them (``--signed``)
carry a C2PA manifest declaring ``trainedAlgorithmicMedia``, signed with the C2PA test certificate
(``tests/c2pa-test-certs/``), so the reader validates a manifest (hashing the whole file) on those
and finds none on the others. The head is a ``spectrum`` head (the weight-free tower, the fastest to
score, so the read weighs most against it), trained for one epoch on the synthetic benchmark
beforehand. Each round scores the folder once without and once with the read (order alternating),
through :func:`deepfake.model.scoring.score`, the code ``deepfake predict`` runs, after one read of
every file so both passes read from the page cache; the median round is reported, and the read alone
(which a busy machine's noise disturbs far less than the difference of two long passes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_spectrum import write_photos  # noqa: E402

CERTS = ROOT / "tests" / "c2pa-test-certs"


def sign_in_place(path: Path) -> None:
    """Rewrite the JPEG at ``path`` with a C2PA manifest declaring a generator, signed by the test certificate."""
    import c2pa

    info = c2pa.C2paSignerInfo(alg=b"es256", sign_cert=(CERTS / "es256_certs.pem").read_bytes(),
                               private_key=(CERTS / "es256_private.key").read_bytes(), ta_url=None)
    signer = c2pa.Signer.from_info(info)
    builder = c2pa.Builder({"claim_generator_info": [{"name": "bench", "version": "1.0"}], "assertions": [
        {"label": "c2pa.actions", "data": {"actions": [
            {"action": "c2pa.created",
             "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"}]}}]})
    out = io.BytesIO()
    builder.sign(signer, "image/jpeg", io.BytesIO(path.read_bytes()), out)
    signer.close()
    path.write_bytes(out.getvalue())


def spectrum_head(folder: Path) -> Path:
    """A ``spectrum`` head trained for one epoch on a small synthetic benchmark (not measured)."""
    from deepfake import DataConfig, RuntimeConfig, ScheduleConfig, TowerConfig, TrainConfig, train
    from deepfake.data.synthetic import generate

    data = generate(folder / "data", n_train=8, n_val=4, n_test=1, test_families=("tconv",))
    with contextlib.redirect_stdout(io.StringIO()):  # its tables are not this benchmark's results
        train(TrainConfig(data=DataConfig(dataset_dir=str(data)), output_dir=str(folder / "run"),
                          tower=TowerConfig(model="spectrum"), schedule=ScheduleConfig(num_epochs=1),
                          runtime=RuntimeConfig(quiet=True)))
    return folder / "run"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="photos (default %(default)s)")
    parser.add_argument("--size", default="1280x720", help="photo size WxH (default %(default)s)")
    parser.add_argument("--signed", type=float, default=0.5, help="share of the photos signed (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both passes (default %(default)s)")
    args = parser.parse_args(argv)
    from deepfake import DeepfakeClassifier
    from deepfake.data.provenance import read_provenance
    from deepfake.model.scoring import score

    w, h = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        write_photos(photos, args.n, (w, h))
        files = sorted(str(p) for p in photos.iterdir())
        for path in files[: round(args.signed * len(files))]:
            sign_in_place(Path(path))
        classifier = DeepfakeClassifier.from_pretrained(spectrum_head(Path(tmp)))
        summaries = [read_provenance(f).summary for f in files]  # and the files are in the page cache
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for with_read in ((False, True) if r % 2 == 0 else (True, False)):
                times[with_read].append(timed(lambda w=with_read: score(classifier, files, provenance=w)))
        read_alone = statistics.median(timed(lambda: [read_provenance(f) for f in files]) for _ in range(args.rounds))
    without, with_read = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.n} JPEGs of {w}x{h}, {summaries.count('declared-generated')} with a signed C2PA manifest; "
          f"spectrum head; on {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.2f}")
    print(f"{'predict without the read':<28} {without:8.2f} s")
    print(f"{'predict with the read':<28} {with_read:8.2f} s   ({100 * (with_read / without - 1):+.1f}%)")
    print(f"{'the read alone':<28} {read_alone:8.3f} s   ({1000 * read_alone / args.n:.2f} ms a file, "
          f"{100 * read_alone / without:.1f}% of predict)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
