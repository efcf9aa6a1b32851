"""List the released detectors this tool runs by name: deepfake detectors [--json].

    deepfake detectors          # a table: name, year, network, trained on, licence, size, cached
    deepfake detectors --json   # every field of every record, for scripts

Each name works wherever a checkpoint is taken (``predict``, ``test``, ``serve``, ``push``,
``DeepfakeClassifier.from_pretrained``): the first use downloads the file from its repository at a
pinned commit, checks its size and hash, and imports it into the cache (``$DEEPFAKE_CACHE`` or
``~/.cache/deepfake``, under ``detectors/``); ``deepfake import NAME FILE`` does the same with a
file obtained another way. ``DEEPFAKE_RELEASES_MIRROR`` replaces ``https://github.com`` in the
URLs. See docs/detectors.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from deepfake.cli.args import CliParser, setup_logging
from deepfake.model.detectors import cached_run, cached_run_dir
from deepfake.model.releases import Detector, detectors

COLUMNS = ("name", "year", "network", "trained on", "licence", "size", "cached")


def _size(record: Detector) -> str:
    if record.size is None:
        return "n/a"
    return f"{record.size / 1e6:.1f} MB" if record.size >= 1e5 else f"{record.size / 1e3:.1f} kB"


def detector_rows() -> list[dict]:
    """One row per record: its fields, its URL, and where its run lies in the cache when it is there."""
    rows = []
    for name, record in detectors().items():
        run = cached_run(name)
        rows.append({**record.to_dict(), "cached": run is not None, "run": str(run or cached_run_dir(name))})
    return rows


def format_table(rows: list[dict]) -> str:
    """The records as a fixed-width table (trained-on text shortened to fit a terminal)."""
    cells = [[r["name"], str(r["year"]), r["network"], _shorten(r["trained_on"], 44),
              r["licence"]["name"] + (" (research only)" if r["licence"]["research_only"] else ""),
              _size(Detector(**{k: v for k, v in r.items() if k in Detector.__dataclass_fields__})),
              "yes" if r["cached"] else "no"] for r in rows]
    widths = [max(len(c[i]) for c in [list(COLUMNS), *cells]) for i in range(len(COLUMNS))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def build_parser(prog: str = "deepfake detectors") -> argparse.ArgumentParser:
    p = CliParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print every field of every record as JSON")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    rows = detector_rows()
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
