"""A web page and JSON API for a trained head: ``deepfake serve --checkpoint RUN``.

    deepfake serve --checkpoint runs/progan            # http://127.0.0.1:8000
    curl -F files=@photo.jpg -F files=@other.png http://127.0.0.1:8000/predict

Open the address in a browser and drop images on the page: each gets P(fake) and the
label at the checkpoint's threshold (with ``--tiles``, a heat map of tile scores).
``POST /predict`` (multipart, field ``files``, one or more) answers with the same fields as
``deepfake predict``; ``GET /health`` tells whether it is up. The server binds to
127.0.0.1 by default. It has no authentication: bind to another address only on a network
where everyone who can reach it may use it.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from deepfake.cli.args import CliParser, parse_threshold, setup_logging
from deepfake.model.checkpoint import CheckpointRefused
from deepfake.model.scoring import DEFAULT_MAX_TILES
from deepfake.serving.app import ServeSettings
from deepfake.towers.weights import WeightsError

log = logging.getLogger(__name__)

# The app's own limits are the flags' defaults (serving/app.py holds each once).
SERVE = ServeSettings(threshold=0.5)
DEFAULT_MAX_UPLOAD_MB = SERVE.max_upload_bytes / (1 << 20)


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="deepfake serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="run directory (uses best), checkpoint file, saved head folder or hub repo id")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s, this machine only; there is no authentication)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help="largest request body in MB; larger uploads get 413 (default: %(default)s)")
    p.add_argument("--max_files", type=int, default=SERVE.max_files, help="most images per request (default: %(default)s)")
    p.add_argument("--max_pixels", type=int, default=SERVE.max_pixels,
                   help="refuse images with more pixels than this (default: %(default)s)")
    p.add_argument("--tiles", type=int, nargs="?", const=DEFAULT_MAX_TILES, default=0,
                   help=f"also score up to N 224px crops per image and show them as a heat map (default N={DEFAULT_MAX_TILES})")
    p.add_argument("--threshold", type=parse_threshold, default=None,
                   help="val (default: the checkpoint's validation threshold), calibrated, or a number in [0, 1]")
    p.add_argument("--max_batch", type=int, default=SERVE.max_batch, help="most images scored in one pass (default: %(default)s)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available)")
    p.add_argument("--precision", default=None, help="tower precision (default: the checkpoint's)")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_server(args: argparse.Namespace):
    """The server a parsed ``serve`` command line describes (model loaded, not started)."""
    from deepfake.serving.server import build_server as server_for

    return server_for(args.checkpoint, host=args.host, port=args.port, threshold=args.threshold, device=args.device,
                      precision=args.precision, tiles=args.tiles, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                      max_files=args.max_files, max_batch=args.max_batch, max_pixels=args.max_pixels)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if not is_loopback(args.host):
        log.warning("binding to %s: anyone who can reach this address can use the server; it has no authentication",
                    args.host)
    try:
        server = build_server(args)
    except (CheckpointRefused, WeightsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    log.info("serving %s on http://%s:%d (Ctrl-C stops)", args.checkpoint, args.host, args.port)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
