"""What every ``san`` command does the same way: its log lines, and how it refuses bad input."""

from __future__ import annotations

import logging
import sys

__all__ = ["cli_logging", "fail"]


def cli_logging(level: int = logging.INFO) -> None:
    """Log san's own messages at ``level`` and other libraries' only from WARNING up.

    The libraries a command drives (the ONNX exporter and optimizer, Gradio, huggingface_hub) log
    hundreds of INFO lines about their internals; a user wants san's few progress lines.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("san").setLevel(level)


def fail(command: str, message: str) -> int:
    """Print ``san <command>: <message>`` to stderr; returns exit code 2 (bad input, nothing done)."""
    print(f"san {command}: {message}", file=sys.stderr)
    return 2
