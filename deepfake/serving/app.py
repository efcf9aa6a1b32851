"""The web app behind ``deepfake serve``: a page to drop images on and a JSON API, one model, batched.

    GET  /          the page (drop or choose images; P(fake), label, tile heat map)
    POST /predict   multipart form, one or more ``files`` -> the fields of ``deepfake predict``
    GET  /health    status, checkpoint, threshold, and counters

The classifier is loaded once, by the caller. Requests put their images on a queue; one
worker thread takes everything waiting (up to ``max_batch`` images) and scores it in a
single pass, so concurrent requests share tower batches instead of each running a model.
Uploads are written to a private temporary folder and read by the same loader as
``deepfake predict``, so a hostile file gets the loader's skip reason, and the request body
is capped (413) before it is read into memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import tempfile
import threading
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastapi import FastAPI, File, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse

from deepfake.deepfake_classifier import DeepfakeClassifier
from deepfake.model.scoring import Prediction, score

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
UPLOAD_CHUNK = 1 << 20
DRAIN_LIMIT = 256 << 20  # past this much refused body, the connection is simply closed


@dataclass
class ServeSettings:
    """How the app scores and what it accepts."""

    threshold: float
    tiles: int = 0
    max_upload_bytes: int = 20 << 20
    max_files: int = 64
    max_batch: int = 16
    max_pixels: int = 64_000_000  # a 64-megapixel photo; lower than predict's, a server holds many at once


@dataclass
class _Job:
    paths: list[str]
    future: Future = field(default_factory=Future)


class BatchScorer:
    """One worker thread that scores queued jobs together, up to ``max_batch`` images per pass."""

    def __init__(self, classifier: DeepfakeClassifier, settings: ServeSettings):
        self.classifier = classifier
        self.settings = settings
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.passes = 0
        self.images = 0
        self._thread = threading.Thread(target=self._run, name="deepfake-scorer", daemon=True)
        self._thread.start()

    def submit(self, paths: list[str]) -> Future:
        job = _Job(paths)
        self.jobs.put(job)
        return job.future

    def close(self) -> None:
        self.jobs.put(None)
        self._thread.join(timeout=30)

    def _take_batch(self) -> list[_Job] | None:
        first = self.jobs.get()
        if first is None:
            return None
        batch, n = [first], len(first.paths)
        # Everything already waiting joins this pass: no timer, so a lone request is never delayed.
        while n < self.settings.max_batch:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)
                break
            batch.append(job)
            n += len(job.paths)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            paths = [p for job in batch for p in job.paths]
            try:
                results = score(self.classifier, paths, batch_size=self.settings.max_batch, num_workers=0,
                                tiles=self.settings.tiles, threshold=self.settings.threshold,
                                max_pixels=self.settings.max_pixels)
            except Exception as exc:  # a failure of the pass fails its requests, never the worker
                log.exception("scoring pass failed")
                for job in batch:
                    job.future.set_exception(exc)
                continue
            self.passes += 1
            self.images += len(paths)
            start = 0
            for job in batch:
                job.future.set_result(results[start : start + len(job.paths)])
                start += len(job.paths)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before it is read into memory."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send, receive=None) -> None:
        if receive is not None:
            # Read (and drop) what the client is still sending, within a bound, so that it gets to
            # read the 413 instead of a reset connection; nothing is kept in memory.
            budget = DRAIN_LIMIT
            while budget > 0:
                message = await receive()
                if message["type"] != "http.request":
                    break
                budget -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        body = json.dumps({"detail": f"upload too large: the limit is {self.max_bytes} bytes per request "
                                     f"(--max_upload_mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, receive)
        received = 0
        exceeded = started = body_done = False

        class TooLarge(Exception):
            pass

        async def limited_receive():
            nonlocal received, exceeded
            nonlocal body_done
            if exceeded:
                raise TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    exceeded = True
                    raise TooLarge
            return message

        async def guarded_send(message):
            nonlocal started
            if exceeded:
                # The body parser may turn our exception into its own 400; the answer is 413 either way.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send, None if body_done else receive)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except TooLarge:
            if not started:
                await self._refuse(send, None if body_done else receive)


def _safe_suffix(name: str) -> str:
    suffix = Path(name or "").suffix.lower()
    return suffix if suffix.isascii() and suffix[1:].isalnum() and len(suffix) <= 6 else ""


def create_app(classifier: DeepfakeClassifier, settings: ServeSettings) -> FastAPI:
    """The FastAPI app for ``classifier`` (already loaded); its scorer thread starts now."""
    scorer = BatchScorer(classifier, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        scorer.close()

    app = FastAPI(title="deepfake", summary="P(fake) for images", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.state.scorer = scorer
    app.state.requests = 0
    page = PAGE.read_text(encoding="utf-8")
    tower = classifier.config.get("tower", {})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "checkpoint": classifier.config.get("checkpoint"), "tower": tower.get("model"),
                "threshold": settings.threshold, "tiles": settings.tiles,
                "max_upload_bytes": settings.max_upload_bytes, "max_files": settings.max_files,
                "requests": app.state.requests, "scoring_passes": scorer.passes, "images_scored": scorer.images}

    @app.post("/predict")
    async def predict(files: list[UploadFile] = File(..., description="one or more images")) -> JSONResponse:
        app.state.requests += 1
        if len(files) > settings.max_files:
            return JSONResponse({"detail": f"too many files: {len(files)} > {settings.max_files} per request"}, 413)
        with tempfile.TemporaryDirectory(prefix="deepfake-upload-") as tmp:
            paths, names = [], []
            for i, upload in enumerate(files):
                path = os.path.join(tmp, f"{i:04d}{_safe_suffix(upload.filename)}")
                with open(path, "wb") as handle:
                    while chunk := await upload.read(UPLOAD_CHUNK):
                        handle.write(chunk)
                paths.append(path)
                names.append(upload.filename or f"<upload {i}>")
            results: list[Prediction] = await asyncio.wrap_future(scorer.submit(paths))
        records = []
        for name, result in zip(names, results):
            record = asdict(result)
            record["path"] = name
            if record["tiles"] is None:
                record.pop("tiles")
            records.append(record)
        return JSONResponse({"checkpoint": classifier.config.get("checkpoint"), "threshold": settings.threshold,
                             "predictions": records})

    return app
