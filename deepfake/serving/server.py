"""The detector behind a web page and a JSON API: ``build_server(checkpoint, config)`` loads it once."""

from __future__ import annotations

from deepfake.config import ServeConfig
from deepfake.model.scoring import refuse_fused_tiles
from deepfake.serving.app import create_app, public_name


def header_deadline_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a request's headers within
    ``seconds`` of connecting (or of its last answer): a client that stalls before the body is
    dropped too (the body's own deadline is the app's, ``guards.RequestGuard``)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            self.loop.call_later(seconds, self._expire, self.cycle)

        def _expire(self, cycle) -> None:
            # Still no new request since the timer was set: no headers arrived in time.
            if self.cycle is cycle and (cycle is None or cycle.response_complete):
                self.timeout_keep_alive_handler()

    return HeaderDeadline


def build_server(checkpoint: str, config: ServeConfig | None = None, threshold: str | float | None = None,
                 device: str | None = None, precision: str | None = None):
    """Load the model once and return an unstarted ``uvicorn.Server`` for the app.

    ``config`` holds the address and every limit (:class:`~deepfake.config.ServeConfig`);
    ``threshold`` is ``val``, ``calibrated``, a number or ``None`` for the checkpoint's own.
    """
    import uvicorn

    from deepfake.deepfake_classifier import DeepfakeClassifier

    config = config or ServeConfig()
    classifier = DeepfakeClassifier.from_pretrained(checkpoint, device=device, precision=precision)
    refuse_fused_tiles(classifier, config.tiles)  # refused at start, not on every request
    app = create_app(classifier, classifier.decision_threshold(threshold), config, public_name(checkpoint))
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                        http=header_deadline_protocol(config.timeout), limit_concurrency=config.max_connections,
                        proxy_headers=False)  # forwarded headers are judged by the app's guard (--forwarded_allow_ips)
    return uvicorn.Server(uv)
