"""The scoring worker of ``deepfake serve``: a bounded queue, and passes bounded in images and pixels.

Requests wait in a queue of at most ``max_queue`` jobs; one more is refused at once
(:class:`QueueFull`, answered 503 with ``Retry-After``) instead of holding its files while
everyone waits. One worker thread scores in passes. A pass takes the job that has waited
longest, then fills up with the smallest waiting jobs, within ``max_batch`` images and
``max_request_pixels`` pixels (sizes read from the files' headers): the worker never decodes
more than that before it looks at the queue again, a small request rides the next pass
however many large ones wait, and the oldest job always goes in, so none waits for ever.
A pass holds at most one large job (:data:`LARGE_JOB_PIXELS` and up), and its small jobs
are scored and answered before the large one is decoded: a small request waits for at most
the one large job being decoded when it arrived. A job whose client has gone is taken off
the queue and never scored.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from deepfake.config import ServeConfig
from deepfake.model.scoring import Prediction, Scorer, score

log = logging.getLogger(__name__)

# A job this large (a 16-megapixel photo and up) takes seconds to decode on a CPU: the
# pass's smaller jobs are answered before it is started.
LARGE_JOB_PIXELS = 16_000_000


@dataclass(eq=False)
class Job:
    """One request's readable files and their decoded size; ``future`` gets their predictions."""

    paths: list[str]
    pixels: int
    future: Future = field(default_factory=Future)


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already; ``retry_after`` is about one pass, in seconds."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} requests are waiting to be scored")
        self.waiting = waiting
        self.retry_after = retry_after


class BatchScorer:
    """One worker thread that scores queued jobs together in bounded passes."""

    def __init__(self, classifier: Scorer, threshold: float, config: ServeConfig):
        self.classifier = classifier
        self.threshold = threshold
        self.config = config
        self.passes = self.images = self.refused = self.dropped = 0
        self.pass_started: float | None = None
        self._waiting: deque[Job] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._pass_seconds = 1.0  # a running mean, for Retry-After
        self._thread = threading.Thread(target=self._run, name="deepfake-scorer", daemon=True)
        self._thread.start()

    def submit(self, paths: list[str], pixels: int) -> Job:
        """Queue a job, or raise :class:`QueueFull` without queueing it."""
        with self._ready:
            if self._closed or len(self._waiting) >= self.config.max_queue:
                self.refused += 1
                raise QueueFull(len(self._waiting), self.retry_after())
            job = Job(paths, pixels)
            self._waiting.append(job)
            self._ready.notify()
        return job

    def drop(self, job: Job) -> bool:
        """Take ``job`` off the queue (its client has gone); ``False`` when a pass has it already."""
        with self._ready:
            try:
                self._waiting.remove(job)
            except ValueError:
                return False
            self.dropped += 1
        job.future.cancel()
        return True

    def waiting(self) -> int:
        """Jobs in the queue, not counting the pass being scored."""
        return len(self._waiting)

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: about one pass."""
        return max(1, math.ceil(self._pass_seconds))

    def close(self) -> None:
        """Stop the worker after its current pass; waiting jobs are cancelled."""
        with self._ready:
            self._closed = True
            for job in self._waiting:
                job.future.cancel()
            self._waiting.clear()
            self._ready.notify_all()
        self._thread.join(timeout=30)

    def _take_pass(self) -> list[Job] | None:
        with self._ready:
            while not self._waiting and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            chosen = [self._waiting.popleft()]
            images, pixels = len(chosen[0].paths), chosen[0].pixels
            large = chosen[0].pixels >= LARGE_JOB_PIXELS
            for job in sorted(self._waiting, key=lambda j: j.pixels):
                fits = images + len(job.paths) <= self.config.max_batch and \
                    pixels + job.pixels <= self.config.max_request_pixels
                if fits and not (large and job.pixels >= LARGE_JOB_PIXELS):  # one large job per pass
                    chosen.append(job)
                    images, pixels = images + len(job.paths), pixels + job.pixels
                    large = large or job.pixels >= LARGE_JOB_PIXELS
            for job in chosen[1:]:
                self._waiting.remove(job)
            self.pass_started = time.monotonic()
        # From here a job can no longer be cancelled; one cancelled just before is left out.
        return [job for job in chosen if job.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        while (jobs := self._take_pass()) is not None:
            try:
                small = [job for job in jobs if job.pixels < LARGE_JOB_PIXELS]
                large = [job for job in jobs if job.pixels >= LARGE_JOB_PIXELS]
                for group in (small, large):
                    if group:
                        self._score_jobs(group)
            finally:
                seconds = time.monotonic() - (self.pass_started or time.monotonic())
                log.debug("pass %d: %d requests, %d images, %d pixels, %.2f s (%d waiting)", self.passes, len(jobs),
                          sum(len(j.paths) for j in jobs), sum(j.pixels for j in jobs), seconds, len(self._waiting))
                self._pass_seconds = 0.7 * self._pass_seconds + 0.3 * seconds
                self.pass_started = None
                self.passes += 1

    def _score(self, paths: list[str]) -> list[Prediction]:
        return score(self.classifier, paths, batch_size=self.config.max_batch, num_workers=0,
                     tiles=self.config.tiles, threshold=self.threshold, max_pixels=self.config.max_pixels)

    def _score_jobs(self, jobs: list[Job]) -> None:
        paths = [p for job in jobs for p in job.paths]
        try:
            results = self._score(paths)
        except Exception as exc:
            if len(jobs) > 1:
                # One request's failure must not fail the others it shared a pass with.
                log.warning("a scoring pass of %d requests failed (%s); scoring them one by one", len(jobs), exc)
                for job in jobs:
                    self._score_jobs([job])
                return
            log.exception("scoring a request failed")
            jobs[0].future.set_exception(exc)
            return
        self.images += len(paths)
        start = 0
        for job in jobs:
            job.future.set_result(results[start : start + len(job.paths)])
            start += len(job.paths)
