"""Progress that is never silent: a tqdm bar on a terminal, a log line at a steady interval elsewhere.

Under ``nohup``, a batch system or ``| tee`` stderr is a file, where a bar's carriage returns are
noise and no bar at all leaves a long job silent. There :class:`Progress` logs
``DESC: DONE/TOTAL UNIT (P%), R UNIT/s, about S s left`` every :data:`LOG_INTERVAL` seconds
(``$DEEPFAKE_PROGRESS_INTERVAL`` overrides it) from a timer thread, so a slow batch does not
hold the line back.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref

from tqdm.auto import tqdm

log = logging.getLogger("deepfake.progress")

LOG_INTERVAL = 30.0  # seconds between progress lines when stderr is not a terminal


def log_interval() -> float:
    """:data:`LOG_INTERVAL`, or ``$DEEPFAKE_PROGRESS_INTERVAL`` seconds where set to a positive number."""
    try:
        value = float(os.environ.get("DEEPFAKE_PROGRESS_INTERVAL", ""))
    except ValueError:
        return LOG_INTERVAL
    return value if value > 0 else LOG_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Progress:
    """``done/total`` of one loop: a bar where stderr is a terminal, periodic log lines where it is not.

    ``enabled=False`` shows nothing (``--quiet``). Use it as a context manager or call :meth:`close`.
    """

    def __init__(self, total: int, desc: str, unit: str = "img", enabled: bool = True, leave: bool = True,
                 interval: float | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self.postfix = ""
        self.start = time.perf_counter()
        self.bar = None
        self._stop = None
        if not enabled:
            return
        if sys.stderr is not None and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave)
        else:
            self._stop = threading.Event()
            # The timer holds the bar weakly: a loop left half-way (an exception, a generator dropped) stops it too.
            threading.Thread(target=_tick, args=(weakref.ref(self), self._stop, interval or log_interval()),
                             name=f"progress-{desc}", daemon=True).start()

    def line(self) -> str:
        """The progress line as logged: done/total, rate and time left."""
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = f", about {_duration((self.total - self.done) / rate)} left" if rate > 0 and self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {self.done}/{self.total} {self.unit}{share}, {rate:.2f} {self.unit}/s{left}{extra}"

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **values) -> None:
        """Values shown beside the count (the bar's postfix; appended to the logged line)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._stop is not None:
            self._stop.set()

    def __del__(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tick(ref: weakref.ref, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        bar = ref()
        if bar is None:
            return
        log.info("%s", bar.line())
        del bar


def write_line(text: str, file=None) -> None:
    """Print a result line without breaking a bar on the terminal (``tqdm.write``)."""
    tqdm.write(text, file=file or sys.stdout)
