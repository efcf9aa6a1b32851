"""``deepfake serve``: the web page and JSON API around one loaded detector."""
