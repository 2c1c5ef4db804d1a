"""``san serve``: SAN over HTTP on LitServe (FastAPI + uvicorn), which batches requests across clients.

Why LitServe: it is a Python-native server with dynamic batching (requests from different clients wait up
to ``batch_timeout`` to share a forward pass), workers per device and several devices, payload limits,
request timeouts and graceful shutdown, on FastAPI, without a model repository format to convert to
(Triton) and in the process model san already uses (one model per worker process).

- ``POST /predict``: :mod:`san.serving.protocol`; requests of one batch that share a vocabulary are one
  ``predict_batch`` call (images of the same model input size in one forward; the text embeddings of each
  name are cached by the model across requests);
- ``GET /health``: 200 once a worker has loaded the model (readiness), 503 before;
- ``GET /metrics``: Prometheus (requests by status, latency, batch sizes, requests in flight);
- a request-size limit (413), a per-request timeout (504), a concurrency limit (503), an optional API key
  (header ``X-API-Key``, 401), a wrong content type (415); every refusal is JSON ``{"detail": one line}``;
  an internal error is a 500 with a ``request_id`` (also in the ``X-Request-ID`` header of every answer),
  the traceback only in the server's log.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import litserve as ls
from fastapi import HTTPException
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse

from .metrics import metrics
from .protocol import RequestError, encode_prediction, parse_request

__all__ = ["SANServeAPI", "ServeMiddleware", "ServeSettings", "build_server"]

logger = logging.getLogger("san.serve")

_OPEN_PATHS = ("/health", "/metrics", "/info", "/docs", "/openapi.json")


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``san serve`` is given (the command line's flags)."""

    weights: str
    config_file: str | None = None
    opts: tuple[str, ...] = ()
    precision: str = "fp32"
    accelerator: str = "auto"
    devices: int | str = "auto"
    workers_per_device: int = 1
    max_batch_size: int = 8
    batch_timeout: float = 0.01
    timeout: float = 60.0
    max_request_bytes: int = 20 << 20
    max_pixels: int | None = 40_000_000
    max_classes: int = 1000
    max_concurrency: int = 64
    api_key: str | None = None
    adapter: str | None = None


class SANServeAPI(ls.LitAPI):
    """One worker: the model, and the batched predict of :mod:`san.serving.protocol` requests."""

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout)
        self.settings = settings

    def setup(self, device: str) -> None:
        from san.inference.predictor import SANPredictor

        s = self.settings
        model, weights = (s.weights, None) if s.config_file is None else (s.config_file, s.weights)
        self.predictor = SANPredictor.from_pretrained(
            model,
            weights=weights,
            device=device,
            precision=s.precision,
            opts=list(s.opts),
            max_pixels=s.max_pixels,
            adapter=s.adapter,
        )
        logger.info("worker ready on %s", device)

    def decode_request(self, request):  # type: ignore[no-untyped-def]  (LitServe reads the annotation: none = the raw body)
        fields = dict(request) if hasattr(request, "keys") else request
        try:
            return parse_request(
                fields,
                default_classes=self.predictor.class_names,
                max_pixels=self.settings.max_pixels,
                max_classes=self.settings.max_classes,
            )
        except RequestError as e:
            raise HTTPException(status_code=e.status, detail=str(e)) from None

    def predict(self, batch: Any) -> Any:
        items = batch if isinstance(batch, list) else [batch]
        metrics().batch_size.observe(len(items))
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(items):
            groups.setdefault(r.group, []).append(i)
        out: list[Any] = [None] * len(items)
        for idx in groups.values():
            first = items[idx[0]]
            preds = self.predictor.predict_batch(
                [items[i].image for i in idx],
                first.vocabulary,
                batch_size=len(idx),
                return_confidence=first.confidence,
            )
            for i, p in zip(idx, preds):
                out[i] = (p, items[i])
        return out if isinstance(batch, list) else out[0]

    def encode_response(self, output: Any) -> dict[str, Any]:
        pred, request = output
        return encode_prediction(pred, request)


class ServeMiddleware(BaseHTTPMiddleware):
    """Request id, API key, content type, concurrency limit and metrics around every request."""

    def __init__(self, app: Any, api_key: str | None, max_concurrency: int) -> None:
        super().__init__(app)
        self.api_key, self.max_concurrency, self.in_flight = api_key, max_concurrency, 0

    async def dispatch(self, request: Any, call_next: Any) -> Any:
        rid = uuid.uuid4().hex[:16]
        if request.url.path in _OPEN_PATHS:
            response = await call_next(request)
            response.headers["X-Request-ID"] = rid
            return response
        m = metrics()
        start = time.perf_counter()
        refusal = self._refusal(request)
        if refusal is not None:
            response = JSONResponse({"detail": refusal[1]}, status_code=refusal[0])
        else:
            self.in_flight += 1
            m.in_flight.inc()
            try:
                response = await call_next(request)
            except Exception:  # the framework's own failure: logged with the id, answered without it
                logger.exception("request %s failed", rid)
                response = JSONResponse({"detail": "internal error"}, status_code=500)
            finally:
                self.in_flight -= 1
                m.in_flight.dec()
            if response.status_code >= 500 and response.status_code != 503 and response.status_code != 504:
                logger.error("request %s: internal error (status %d)", rid, response.status_code)
                response = JSONResponse(
                    {"detail": "internal error; the server's log has the details", "request_id": rid},
                    status_code=500,
                )
        response.headers["X-Request-ID"] = rid
        m.requests.labels(status=str(response.status_code)).inc()
        m.latency.observe(time.perf_counter() - start)
        return response

    def _refusal(self, request: Any) -> tuple[int, str] | None:
        if self.api_key is not None:
            given = request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return 401, "wrong or missing API key: send it in the X-API-Key header"
        if request.method == "POST":
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind not in ("multipart/form-data", "application/json", "application/x-www-form-urlencoded"):
                return 415, (
                    f"content type {kind or 'none'!r}: send multipart/form-data (an image file) or "
                    "application/json (base64 image)"
                )
        if self.in_flight >= self.max_concurrency:
            return 503, f"busy: {self.in_flight} requests in flight (limit {self.max_concurrency}); retry later"
        return None


def build_server(settings: ServeSettings) -> Any:
    """The LitServe server of ``settings`` (not started): the API, the limits, ``/metrics``."""
    from .metrics import init_metrics

    init_metrics()  # before any process starts: the workers and API servers share its folder
    import litserve as ls
    from fastapi import Response

    from .metrics import render

    api = SANServeAPI(settings)
    server = ls.LitServer(
        api,
        accelerator=settings.accelerator,
        devices=settings.devices,
        workers_per_device=settings.workers_per_device,
        timeout=settings.timeout,
        max_payload_size=settings.max_request_bytes,
        middlewares=[(ServeMiddleware, {"api_key": settings.api_key, "max_concurrency": settings.max_concurrency})],
    )

    @server.app.get("/metrics")
    def prometheus_metrics() -> Response:
        body, kind = render()
        return Response(content=body, media_type=kind)

    os.environ.setdefault("LITSERVE_DISABLE_CLIENT_FILE", "1")
    return server
