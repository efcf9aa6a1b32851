"""The web app behind ``deepfake serve``: a page to drop images on and a JSON API, one model, batched.

    GET  /          the page (drop or choose images; P(fake), label, tile heat map)
    POST /predict   multipart form, one or more ``files`` -> the fields of ``deepfake predict``
    GET  /health    status, checkpoint and tower names, threshold, queue and counters

The classifier is loaded once, by the caller. What a request may be is checked on the way
in (``guards``: Host, Origin, body size and time); its files are spooled to disk as the
body streams in, copied into a private temporary folder and sized from their headers
(``uploads``); then it waits in a bounded queue for the scoring worker (``scheduler``),
which scores waiting requests together in passes bounded in images and pixels. A full
queue answers 503 with ``Retry-After``; a client that disconnects while its request waits
is dropped from the queue. Files are read by the same loader as ``deepfake predict``, so a
hostile file gets the loader's skip reason and fails only itself. Answers name the
checkpoint and tower, never a local path.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from deepfake.config import ServeConfig
from deepfake.model.hub import is_repo_id
from deepfake.model.ood import ood_config
from deepfake.model.scoring import Prediction, Scorer
from deepfake.serving.guards import RequestGuard, allowed_hosts
from deepfake.serving.scheduler import BatchScorer, Job, QueueFull
from deepfake.serving.uploads import Upload, UploadRefused, receive_uploads

PAGE = Path(__file__).with_name("page.html")
# The API's form, for the /docs page (the body is parsed by hand, to spool it and bound it).
PREDICT_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "one or more images"}}}}}}}


def public_name(value: str | os.PathLike | None) -> str | None:
    """A checkpoint or tower as an answer may show it: a hub id as is, a local path by its name only."""
    if value is None:
        return None
    text = os.fspath(value)
    if is_repo_id(text) or not text:
        return text
    return Path(text).resolve().name if text.rstrip("/\\") in ("", ".", "..") else Path(text.rstrip("/\\")).name


def _record(upload: Upload, result: Prediction | None) -> dict:
    if result is None:
        result = Prediction(upload.name, None, None, None, upload.skipped)
    record = asdict(result)
    record["path"] = upload.name
    # A reason quotes the file it failed on: the client's name, never where it lay here.
    record["skipped"] = record["skipped"].replace(upload.path, upload.name).replace(
        os.path.dirname(upload.path), "<upload>")
    if record["tiles"] is None:
        record.pop("tiles")
    return record


async def _client_gone(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _wait(request: Request, scorer: BatchScorer, job: Job) -> list[Prediction] | None:
    """The job's predictions, or ``None`` when the client went away first (then it is not scored)."""
    result = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_client_gone(request.receive))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if result.done():
        return result.result()
    if not scorer.drop(job):
        await asyncio.wait({result})  # a pass has it already: let it finish, the answer goes nowhere
    return None


def _busy(exc: QueueFull) -> JSONResponse:
    return JSONResponse({"detail": f"the server is busy: {exc.waiting} requests are waiting to be scored "
                                   f"(--max_queue); retry after {exc.retry_after} s"},
                        503, headers={"Retry-After": str(exc.retry_after)})


async def _predict(request: Request, scorer: BatchScorer, config: ServeConfig) -> Response | list[dict]:
    with tempfile.TemporaryDirectory(prefix="deepfake-upload-") as folder:
        try:
            uploads = await receive_uploads(request, folder, config)
        except UploadRefused as exc:
            return JSONResponse({"detail": exc.detail}, exc.status)
        ready = [u for u in uploads if not u.skipped]
        results: dict[int, Prediction] = {}
        if ready:
            try:
                job = scorer.submit([u.path for u in ready], sum(u.pixels for u in ready))
            except QueueFull as exc:
                return _busy(exc)
            predictions = await _wait(request, scorer, job)
            if predictions is None:
                return Response(status_code=499)  # the client is gone; nobody reads this
            results = {id(u): p for u, p in zip(ready, predictions)}
        return [_record(u, results.get(id(u))) for u in uploads]


def create_app(classifier: Scorer, threshold: float, config: ServeConfig | None = None,
               checkpoint_name: str | None = None) -> FastAPI:
    """The FastAPI app for ``classifier`` (already loaded); its scoring thread starts now."""
    config = config or ServeConfig()
    scorer = BatchScorer(classifier, threshold, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        scorer.close()

    app = FastAPI(title="deepfake", summary="P(fake) for images", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.add_middleware(RequestGuard, hosts=allowed_hosts(config), max_bytes=config.max_upload_bytes,
                       timeout=config.timeout, origins=config.allow_origin, proxies=config.forwarded_allow_ips)
    app.state.scorer = scorer
    app.state.requests = 0
    page = PAGE.read_text(encoding="utf-8")
    checkpoint = checkpoint_name or public_name(classifier.config.get("checkpoint"))
    tower = public_name(classifier.config.get("tower", {}).get("model"))
    ood = ood_config(classifier.head)  # distance and threshold of the per-image flag; None: every image "unknown"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        started = scorer.pass_started
        return {"status": "ok", "checkpoint": checkpoint, "tower": tower, "threshold": threshold, "ood": ood,
                "tiles": config.tiles, "max_upload_bytes": config.max_upload_bytes, "max_files": config.max_files,
                "max_queue": config.max_queue, "waiting": scorer.waiting(),
                "pass_seconds": round(time.monotonic() - started, 3) if started else 0.0,
                "requests": app.state.requests, "refused_busy": scorer.refused, "dropped": scorer.dropped,
                "scoring_passes": scorer.passes, "images_scored": scorer.images}

    @app.post("/predict", openapi_extra=PREDICT_FORM)
    async def predict(request: Request) -> Response:
        app.state.requests += 1
        answer = await _predict(request, scorer, config)
        if isinstance(answer, Response):
            return answer
        return JSONResponse({"checkpoint": checkpoint, "threshold": threshold, "predictions": answer})

    return app
