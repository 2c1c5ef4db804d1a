"""A Python client of ``san serve`` that gives back a :class:`~san.inference.result.Prediction`, so that
``to_supervision()``, ``to_segments()`` and ``pixel_fractions()`` work on a remote result.

    client = SANClient("http://127.0.0.1:8000")
    result = client.predict("photo.jpg", "cat, grass, sky")
    detections = result.to_supervision()
"""

from __future__ import annotations

import io
import os
from typing import Any

from .protocol import decode_prediction

__all__ = ["SANClient", "ServeError"]


class ServeError(RuntimeError):
    """The server refused or failed a request: ``status`` and its one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


def _encoded(image: Any) -> bytes:
    """The bytes to upload: a file's own bytes, or a PNG of an array / PIL image."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    from PIL import Image

    from san.data.images import to_rgb_array

    buf = io.BytesIO()
    Image.fromarray(to_rgb_array(image, max_pixels=None)).save(buf, format="PNG")
    return buf.getvalue()


class SANClient:
    """Calls ``POST /predict`` of a ``san serve`` server (``requests``; ``api_key``: the X-API-Key header)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 120.0):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.headers = {"X-API-Key": api_key} if api_key else {}

    def predict_json(self, image: Any, vocabulary: str | list[str] | None = None, **options: Any) -> dict[str, Any]:
        """The server's JSON answer (:mod:`san.serving.protocol`); ``options``: other, label_png, masks, confidence."""
        import requests

        fields = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
        if vocabulary is not None:
            fields["vocabulary"] = vocabulary if isinstance(vocabulary, str) else ", ".join(vocabulary)
        files = {"image": ("image", _encoded(image))}
        r = requests.post(f"{self.url}/predict", data=fields, files=files, headers=self.headers, timeout=self.timeout)
        if r.status_code != 200:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServeError(r.status_code, str(detail))
        return r.json()

    def predict(self, image: Any, vocabulary: str | list[str] | None = None, *, other: str = "none") -> Any:
        """Segment ``image`` (path, bytes, PIL image or array) remotely; a ``Prediction`` with the exact label
        map and each region's mean confidence and score."""
        return decode_prediction(self.predict_json(image, vocabulary, other=other, masks=True))

    def ready(self) -> bool:
        """Whether the server has loaded its model (``GET /health`` answers 200)."""
        import requests

        try:
            return requests.get(f"{self.url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False
