"""The detector behind a web page and a JSON API: ``build_server(checkpoint, ...)`` loads it once."""

from __future__ import annotations

from deepfake.serving.app import ServeSettings, create_app


def build_server(checkpoint: str, host: str = "127.0.0.1", port: int = 8000, threshold: str | float | None = None,
                 device: str | None = None, precision: str | None = None, **limits):
    """Load the model once and return an unstarted ``uvicorn.Server`` for the app.

    ``limits`` are :class:`~deepfake.serving.app.ServeSettings` fields (``tiles``, ``max_upload_bytes``,
    ``max_files``, ``max_batch``, ``max_pixels``); ``threshold`` is ``val``, ``calibrated``, a number
    or ``None`` for the checkpoint's own.
    """
    import uvicorn

    from deepfake.deepfake_classifier import DeepfakeClassifier

    classifier = DeepfakeClassifier.from_pretrained(checkpoint, device=device, precision=precision)
    settings = ServeSettings(threshold=classifier.decision_threshold(threshold), **limits)
    config = uvicorn.Config(create_app(classifier, settings), host=host, port=port, log_level="warning",
                            access_log=False)
    return uvicorn.Server(config)
