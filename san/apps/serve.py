"""``san serve``: serve a SAN model over HTTP with batching across clients (LitServe; ``pip install -e ".[serve]"``).

    san serve --weights san-vit-b-16 --port 8000
    san serve --weights runs/mine --max-batch-size 16 --batch-timeout 0.02 --api-key-env SAN_API_KEY
    curl -F image=@photo.jpg -F vocabulary="cat, grass, sky" http://127.0.0.1:8000/predict

The protocol: :mod:`san.serving.protocol`; the server: :mod:`san.serving.server`; a Python client that
returns a ``Prediction``: ``san.serving.client.SANClient``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from san.apps.common import cli_logging, fail

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="san serve", description="Serve SAN over HTTP: POST /predict, /health, /metrics.")
    p.add_argument("--weights", "-w", default="san-vit-b-16", help="any model san predict takes (name, folder, file)")
    p.add_argument("--config-file", default=None, help="config of --weights when it is a bare checkpoint")
    p.add_argument("--adapter", default=None, help="a domain adapter of the model (san adapt's folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--devices", default="auto", help="number of devices (GPUs) to use, or auto")
    p.add_argument("--workers-per-device", type=int, default=1, help="model copies per device")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--max-batch-size", type=int, default=8, help="requests answered by one model call")
    p.add_argument("--batch-timeout", type=float, default=0.01, help="seconds a request waits to share a batch")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a request is answered 504")
    p.add_argument("--max-request-mb", type=float, default=20.0, help="larger requests are answered 413")
    p.add_argument("--max-pixels", type=float, default=40e6, help="larger images are answered 413")
    p.add_argument("--max-classes", type=int, default=1000, help="longer vocabularies are answered 400")
    p.add_argument("--max-concurrency", type=int, default=64, help="requests in flight before answering 503")
    p.add_argument(
        "--api-key-env",
        default=None,
        metavar="NAME",
        help="require the API key held in environment variable NAME (clients send it as X-API-Key)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


def _check(args: argparse.Namespace) -> str | None:
    """What can be refused before any process starts or model loads."""
    from san.model_source import locate_model

    if len(args.opts) % 2:
        return f"config overrides come in KEY VALUE pairs, got {args.opts}"
    positive = {
        "--max-batch-size": args.max_batch_size,
        "--workers-per-device": args.workers_per_device,
        "--max-classes": args.max_classes,
        "--max-concurrency": args.max_concurrency,
        "--timeout": args.timeout,
        "--max-request-mb": args.max_request_mb,
    }
    bad = [f"{k} {v}" for k, v in positive.items() if v <= 0]
    if bad or args.batch_timeout < 0:
        return f"need positive limits, got {', '.join(bad) or f'--batch-timeout {args.batch_timeout}'}"
    if args.batch_timeout >= args.timeout:
        return f"--batch-timeout {args.batch_timeout} must be below --timeout {args.timeout}"
    if args.api_key_env is not None and not os.environ.get(args.api_key_env):
        return f"--api-key-env {args.api_key_env}: that environment variable is empty or unset"
    try:
        source = locate_model(args.weights, args.config_file)
    except OSError as e:
        return str(e)
    if source.kind == "checkpoint" and "://" not in source.weights and not os.path.isfile(source.weights):
        return f"--weights {args.weights}: no such file, and not an official name (san-vit-b-16, san-vit-l-14)"
    if args.adapter is not None:
        from san.inference.adapter import Adapter, AdapterError

        try:  # a missing, corrupt or foreign file is refused here; the model check is the workers'
            Adapter.load(args.adapter)
        except AdapterError as e:
            return str(e)
    with socket.socket() as s:
        try:
            s.bind((args.host, args.port))
        except OSError as e:
            return f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port"
    import importlib.util

    # found, not imported: prometheus_client must first be imported after its multiprocess folder is set
    if any(importlib.util.find_spec(m) is None for m in ("litserve", "prometheus_client")):
        return 'san serve needs the serve extra: pip install -e ".[serve]" (litserve, prometheus-client)'
    return None


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as KeyboardInterrupt: LitServe then stops accepting, lets uvicorn answer what is in flight and
    stops its worker processes (Python's default for SIGTERM would end this process alone, orphaning them)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    problem = _check(args)
    if problem:
        return fail("serve", problem)
    cli_logging()
    from san.serving.server import ServeSettings, build_server

    settings = ServeSettings(
        weights=args.weights,
        config_file=args.config_file,
        opts=tuple(args.opts),
        precision=args.precision,
        accelerator=args.accelerator,
        devices=int(args.devices) if str(args.devices).isdigit() else args.devices,
        workers_per_device=args.workers_per_device,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        timeout=args.timeout,
        max_request_bytes=int(args.max_request_mb * (1 << 20)),
        max_pixels=int(args.max_pixels),
        max_classes=args.max_classes,
        max_concurrency=args.max_concurrency,
        api_key=os.environ[args.api_key_env] if args.api_key_env else None,
        adapter=args.adapter,
    )
    server = build_server(settings)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM (docker stop, kubernetes) shuts down as Ctrl-C does
    print(f"san serve: loading {args.weights}; POST http://{args.host}:{args.port}/predict once /health answers 200")
    server.run(host=args.host, port=args.port, generate_client_file=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
