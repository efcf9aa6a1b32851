"""A web page and JSON API for a trained head: ``deepfake serve --checkpoint RUN``.

    deepfake serve --checkpoint runs/progan            # http://127.0.0.1:8000
    curl -F files=@photo.jpg -F files=@other.png http://127.0.0.1:8000/predict

Open the address in a browser and drop images on the page: each gets P(fake) and the
label at the checkpoint's threshold (with ``--tiles``, a heat map of tile scores).
``POST /predict`` (multipart, field ``files``, one or more) answers with the same fields as
``deepfake predict``; ``GET /health`` tells whether it is up. The server binds to
127.0.0.1 by default and answers only the names it is bound to (``--allow_host`` adds
more), refuses POSTs from other web pages' origins, and bounds what it holds: a full queue
(``--max_queue``) answers 503 with Retry-After. It has no authentication: bind to another
address only on a network where everyone who can reach it may use it.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys

from deepfake.cli.args import CliParser, add_threads_arg, parse_threshold, setup_logging
from deepfake.config import ServeConfig, from_flags
from deepfake.model.checkpoint import CheckpointRefused
from deepfake.model.scoring import DEFAULT_MAX_TILES
from deepfake.towers.weights import WeightsError
from deepfake.utils.threads import budget_threads

log = logging.getLogger(__name__)

# Every limit's default is the config's (deepfake/config.py holds each once).
SERVE = ServeConfig()


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="deepfake serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="run directory (uses best), checkpoint file, saved head folder, hub repo id or a released "
                        "detector's name (`deepfake detectors` lists them; fetched into the cache on first use)")
    p.add_argument("--host", default=SERVE.host,
                   help="address to bind (default: %(default)s, this machine only; there is no authentication)")
    p.add_argument("--port", type=int, default=SERVE.port)
    p.add_argument("--allow_host", action="append", default=list(SERVE.allow_host), metavar="NAME",
                   help="also answer requests whose Host is NAME (repeatable; a reverse proxy's or a LAN name). "
                        "Other Host names get 400 (default: loopback names and the --host address)")
    p.add_argument("--forwarded_allow_ips", action="append", default=list(SERVE.forwarded_allow_ips),
                   metavar="ADDR", help="a reverse proxy's address or network (repeatable): its X-Forwarded-Proto "
                                        "and X-Forwarded-Host give the origin its page's uploads come from (default: "
                                        "none; those headers are ignored)")
    p.add_argument("--allow_origin", action="append", default=list(SERVE.allow_origin), metavar="URL",
                   help="also accept POSTs from this origin, e.g. https://detector.example.org (repeatable)")
    p.add_argument("--max_upload_mb", type=float, default=SERVE.max_upload_mb,
                   help="largest request body in MB; larger uploads get 413 (default: %(default)s)")
    p.add_argument("--max_files", type=int, default=SERVE.max_files, help="most images per request (default: %(default)s)")
    p.add_argument("--max_pixels", type=int, default=SERVE.max_pixels,
                   help="refuse images with more pixels than this (default: %(default)s)")
    p.add_argument("--max_request_pixels", type=int, default=SERVE.max_request_pixels,
                   help="pixels one request may have decoded, read from the files' headers; files past it are "
                        "skipped with that reason. Also the most one scoring pass decodes (default: %(default)s)")
    p.add_argument("--max_queue", type=int, default=SERVE.max_queue,
                   help="requests waiting to be scored; when full, more get 503 with Retry-After (default: %(default)s)")
    p.add_argument("--max_connections", type=int, default=SERVE.max_connections,
                   help="open connections; past it requests get 503 (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=SERVE.timeout,
                   help="seconds a client has to send a request's headers, and again its body; slower ones are "
                        "dropped (408) (default: %(default)s)")
    p.add_argument("--tiles", type=int, nargs="?", const=DEFAULT_MAX_TILES, default=SERVE.tiles,
                   help=f"also score up to N 224px crops per image and show them as a heat map (default N={DEFAULT_MAX_TILES})")
    p.add_argument("--threshold", type=parse_threshold, default=None,
                   help="val (default: the checkpoint's validation threshold), calibrated, or a number in [0, 1]")
    p.add_argument("--max_batch", type=int, default=SERVE.max_batch, help="most images scored in one pass (default: %(default)s)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available)")
    p.add_argument("--precision", default=None, help="tower precision (default: the checkpoint's)")
    add_threads_arg(p)
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


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The address and limits a parsed ``serve`` command line asks for; ``ValueError`` names a bad flag."""
    return from_flags(ServeConfig, vars(args))


def listen_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (checked before the model loads), or ``None``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"--host {host}: not an address of this machine ({exc})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc} (--host, --port)"
    return None


def build_server(args: argparse.Namespace, config: ServeConfig | None = None):
    """The server a parsed ``serve`` command line describes (model loaded, not started)."""
    from deepfake.serving.server import build_server as server_for

    return server_for(args.checkpoint, config or serve_config(args), threshold=args.threshold, device=args.device,
                      precision=args.precision)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        config = serve_config(args)
    except ValueError as exc:
        log.error("deepfake serve: %s", exc)
        return 2
    problem = listen_problem(config.host, config.port)
    if problem:
        log.error("deepfake serve: %s", problem)
        return 2
    if not is_loopback(config.host):
        log.warning("binding to %s: anyone who can reach this address can use the server; it has no authentication",
                    config.host)
    try:
        server = build_server(args, config)
    except (CheckpointRefused, WeightsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    budget_threads(args.threads, workers=0)  # the scoring worker decodes in this process
    log.info("serving %s on http://%s:%d (Ctrl-C stops)", args.checkpoint, config.host, config.port)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
