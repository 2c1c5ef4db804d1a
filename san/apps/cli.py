"""The ``san`` command: ``san <command> [args]``; each command lives in its own module of ``san.apps``.

Nothing heavy is imported before a command starts its work, so ``san --help``, ``san --version``
and usage errors answer at once.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help); each module has main(argv: list[str] | None) -> int | None
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("san.apps.train", "train / evaluate (official train_net.py command line)"),
    "adapt": ("san.apps.adapt", "adapt the classifier to a domain from a few labelled images"),
    "prepare-data": ("san.apps.prepare_data", "turn raw dataset downloads into the benchmark layout"),
    "predict": ("san.apps.predict", "segment images with any vocabulary"),
    "demo": ("san.apps.demo", "start the local Gradio web demo"),
    "index": ("san.apps.index", "encode an image collection into a searchable region index"),
    "search": ("san.apps.search", "rank the images of an index by a phrase"),
    "export": ("san.apps.export", "export a model: the Hugging Face Hub format, or ONNX"),
    "serve": ("san.apps.serve", "serve a model over HTTP (batched requests, metrics)"),
}


def _usage() -> str:
    lines = ["usage: san [--version] <command> [args]", "", "commands:"]
    lines += [f"  {name:<14} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`san <command> --help` describes a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``san <command>`` to the command's module."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from san import __version__

        print(f"san {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"san: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
