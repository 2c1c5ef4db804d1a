"""``san demo``: a local Gradio web page: upload an image, type class names, see the segmentation.

Like the official Hugging Face Space (``app.py``): a model choice, the vocabulary expansion
("other": COCO-Stuff distractors, on by default as in the Space), an overlay at the input's size
and a legend. What is particular to san:

- segment once, ask anything: the image is encoded once (:meth:`SANPredictor.encode`); typing
  another vocabulary re-labels it without running the image path again, and the page says how long
  each step took;
- uploads are decoded by san itself, so a text file named ``.png``, a truncated or empty file or a
  20000 x 20000 PNG gets san's own message, on the page and in the API response;
- warnings about the vocabulary (duplicates dropped, empty entries ignored, names cut to fit CLIP's
  context) are shown on the page, in a message box and as a pop-up;
- official models that are not downloaded while the machine is offline are listed as unavailable;
  choosing one says so at once and keeps the loaded model. Models load on first use and one stays in
  memory at a time.

Needs ``pip install -e ".[demo]"`` (gradio) in a clone.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from san.apps.common import cli_logging, fail
from san.model_zoo import MODELS

logger = logging.getLogger("san.demo")

DEFAULT_VOCABULARY = "person, sky, grass, tree, building, road, car, dog, cat"
_KEPT_ENCODINGS = 4  # recent images whose encodings are kept, per model


class ModelUnavailable(RuntimeError):
    """A model cannot be loaded here (not downloaded and offline, or broken weights)."""


class _Models:
    """Builds predictors by name on demand, keeping the last one that loaded (a failed load keeps it)."""

    def __init__(self, factory: Callable[[str], Any]) -> None:
        self.factory = factory
        self.name: str | None = None
        self.predictor: Any = None
        self.lock = threading.Lock()

    def get(self, name: str) -> Any:
        with self.lock:
            if name != self.name:
                predictor = self.factory(name)  # raises before anything is replaced
                self.predictor, self.name = predictor, name
            return self.predictor


class _Encodings:
    """The encodings of the last few images of one model, keyed by their pixels."""

    def __init__(self) -> None:
        self.items: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, key: tuple, make: Callable[[], Any]) -> tuple[Any, bool]:
        """``(encoding, reused)``."""
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key], True
        value = make()
        self.items[key] = value
        while len(self.items) > _KEPT_ENCODINGS:
            self.items.popitem(last=False)
        return value, False


class _ThreadWarnings(logging.Handler):
    """Keeps the messages of warnings logged by one thread (one web request)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextmanager
def collect_warnings(logger_name: str = "san") -> Iterator[list[str]]:
    """The warnings that ``logger_name`` and its children log in this thread inside the block."""
    handler = _ThreadWarnings()
    target = logging.getLogger(logger_name)
    target.addHandler(handler)
    try:
        yield handler.messages
    finally:
        target.removeHandler(handler)


def segment(predictor: Any, encoding: Any, rgb: np.ndarray, vocabulary: str, other: str, alpha: float = 0.55):
    """(overlay at the input size, legend picture, {class: fraction}) of an encoded image."""
    from san.inference.visualize import legend, overlay

    pred = predictor.classify(encoding, vocabulary, other=other)
    fractions = pred.pixel_fractions()
    return (
        overlay(rgb, pred.labels, pred.class_names, alpha),
        np.asarray(legend(fractions, pred.class_names, font_size=16)),
        fractions,
    )


def _tolerant(preprocess: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An image input's preprocessing that hands san the uploaded file even when PIL cannot open it,
    so that san's own decoder says what is wrong with it (gradio's error would be generic)."""

    def run(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except Exception:
            return None if payload is None else payload.path

    return run


def model_choices(names: list[str], available: Callable[[str], bool]) -> list[tuple[str, str]]:
    """``(label, value)`` of the model menu; unavailable models say so in their label."""
    return [(name if available(name) else f"{name} (not downloaded; offline)", name) for name in names]


def build_demo(
    factory: Callable[[str], Any],
    model_names: list[str],
    title: str = "SAN: segment anything you name",
    available: Callable[[str], bool] = lambda name: True,
    max_pixels: int | None = None,
    vocabulary: str = DEFAULT_VOCABULARY,
):
    """The Gradio Blocks app; ``factory(name)`` returns a :class:`san.SANPredictor`; ``vocabulary`` fills
    the class-names box at start."""
    import gradio as gr

    from san.data.images import DEFAULT_MAX_PIXELS, ImageError, read_image
    from san.inference.vocabulary import EmptyVocabularyError

    models = _Models(factory)
    encodings: dict[str, _Encodings] = {}
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels

    def refused(message: str) -> tuple:
        """No result, and the reason in Messages (where it stays; the toast goes after a few seconds)."""
        gr.Warning(message)
        return None, None, None, message

    def run(image_path: str | None, vocabulary: str, other: str, model_name: str):
        if not image_path:
            return refused("Upload an image first.")
        upload = os.path.basename(image_path)  # the upload's own name (gradio keeps it in its cache path)
        try:
            with collect_warnings() as notes:
                if not available(model_name):
                    raise ModelUnavailable(
                        f"{model_name} is not downloaded and this machine is offline; the loaded model stays. "
                        "Choose another model, or start the demo with --weights pointing at a local checkpoint."
                    )
                predictor = models.get(model_name)
                rgb = read_image(image_path, limit)
                key = (rgb.shape, hashlib.blake2b(rgb.tobytes(), digest_size=16).hexdigest())  # the same picture
                t0 = time.perf_counter()
                encoding, reused = encodings.setdefault(model_name, _Encodings()).get(
                    key, lambda: predictor.encode(rgb)
                )
                t1 = time.perf_counter()
                result = segment(predictor, encoding, rgb, vocabulary or "", other)
                t2 = time.perf_counter()
        except ImageError as e:
            return refused(f"Cannot use the upload {upload}: {str(e).replace(image_path, upload)}")
        except EmptyVocabularyError:
            return refused("Type one or more class names under “Class names”, separated by commas: cat, grass, sky")
        except (ModelUnavailable, ValueError, TypeError, RuntimeError, OSError, MemoryError) as e:
            logger.warning("demo request failed: %s", e)
            return refused(str(e) or type(e).__name__)
        for note in notes:
            gr.Warning(note)
        step = "image encoding reused" if reused else f"image encoded in {t1 - t0:.2f} s"
        timing = f"{step}; labelled with {len(result[2])} class(es) present in {t2 - t1:.2f} s"
        return (*result, "\n".join([timing, *(f"Warning: {n}" for n in notes)]))

    with gr.Blocks(title="SAN demo") as demo:
        gr.Markdown(
            f"# {title}\nOpen-vocabulary semantic segmentation with the Side Adapter Network (Xu et al., CVPR 2023). "
            "Separate class names with commas; `road|route` is one class with synonyms. Changing only the names "
            "re-labels the image without encoding it again."
        )
        with gr.Row():
            image = gr.Image(type="filepath", label="Image", elem_id="input_image", image_mode=None)
            image.preprocess = _tolerant(image.preprocess)
            result = gr.Image(type="numpy", label="Segmentation", elem_id="output_image", format="png")
        with gr.Row():
            choices = model_choices(model_names, available)
            model = gr.Dropdown(choices, value=model_names[0], label="Model", elem_id="model")
            other = gr.Dropdown(
                ["coco-all", "coco-stuff", "none"],
                value="coco-all",
                label="Vocabulary expansion (distractor pixels shown as 'other')",
                elem_id="other",
            )
        vocabulary_box = gr.Textbox(value=vocabulary, label="Class names", lines=3, elem_id="vocabulary")
        button = gr.Button("Segment", variant="primary", elem_id="submit")
        status = gr.Textbox(label="Messages", elem_id="status", interactive=False, lines=2)
        with gr.Row():
            key = gr.Image(type="numpy", label="Legend", elem_id="legend", format="png")
            shares = gr.Label(label="Pixel share", elem_id="fractions")
        button.click(run, [image, vocabulary_box, other, model], [result, key, shares, status], api_name="segment")
    return demo


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="san demo", description="Start the local SAN web demo (Gradio).")
    p.add_argument(
        "--weights", "-w", default=None, help="model or training folder / checkpoint / URL / official name, shown first"
    )
    p.add_argument("--config-file", default=None, help="config of --weights when it is a file or URL")
    p.add_argument("--adapter", default=None, help="a domain adapter of --weights (san adapt's folder)")
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run ``san demo`` until interrupted."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cli_logging()
    from san.devices import check_device_name

    try:
        check_device_name(args.device)
    except ValueError as e:
        return fail("demo", str(e))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("san demo needs gradio: pip install -e '.[demo]' in the clone (or pip install gradio)", file=sys.stderr)
        return 2
    from san.inference.predictor import SANPredictor
    from san.model_source import model_classes
    from san.model_zoo import get_model_info, is_available

    names = list(MODELS)
    custom = None
    if args.weights is not None and get_model_info(args.weights) is None:
        custom = f"custom: {os.path.basename(str(args.weights))}"
        names.insert(0, custom)
    elif args.weights is not None:
        first = get_model_info(args.weights).name
        names.remove(first)
        names.insert(0, first)
    offline = {name: not is_available(name) for name in names if name in MODELS}  # checked once, at start

    def factory(name: str) -> SANPredictor:
        kw = {"device": args.device, "precision": args.precision, "opts": args.opts}
        if name == custom:  # a folder or checkpoint brings its config unless --config-file names one
            kw["adapter"] = args.adapter
            if args.config_file is None:
                return SANPredictor.from_pretrained(args.weights, **kw)
            return SANPredictor.from_pretrained(args.config_file, weights=args.weights, **kw)
        return SANPredictor.from_pretrained(name, **kw)

    try:  # a model trained on your own data opens with its training classes
        classes = model_classes(args.weights, args.config_file) if custom else []
    except (OSError, ValueError) as e:
        return fail("demo", str(e))
    app = build_demo(
        factory,
        names,
        available=lambda name: not offline.get(name, False),
        vocabulary=", ".join(classes) if classes else DEFAULT_VOCABULARY,
    )
    app.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True, prevent_thread_lock=True)
    print(f"san demo: running at {app.local_url} (Ctrl-C stops it)")
    if args.share:
        print(f"san demo: public link {app.share_url}")
    else:
        print("san demo: `san demo --share` also makes a public gradio.live link")
    app.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
