"""``san demo``: a local Gradio web page: upload an image, type class names, see the segmentation.

Like the official Hugging Face Space (``app.py``): a model choice, the vocabulary expansion
("other": COCO-Stuff distractors, on by default as in the Space), an overlay at the input's size
and a legend. Warnings about the vocabulary (duplicates dropped, empty entries ignored, names cut
to fit CLIP's context) are shown on the page, in a message box and as a pop-up, not only in the
server log. Models load on first use and one stays in memory at a time. Needs ``pip install
-e ".[demo]"`` (gradio) in a clone.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from san.model_zoo import MODELS

logger = logging.getLogger("san.demo")

DEFAULT_VOCABULARY = "person, sky, grass, tree, building, road, car, dog, cat"


class _Models:
    """Builds predictors by name on demand, keeping only the last one."""

    def __init__(self, factory: Callable[[str], object]) -> None:
        self.factory = factory
        self.name: str | None = None
        self.predictor = None

    def get(self, name: str):
        if name != self.name:
            self.predictor, self.name = None, None
            self.predictor, self.name = self.factory(name), name
        return self.predictor


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


def segment(predictor, image: np.ndarray, vocabulary: str, other: str, alpha: float = 0.55):
    """(overlay at the input size, legend picture, {class: fraction}) for one uploaded image."""
    from san.data.images import to_rgb_array
    from san.inference.visualize import legend, overlay

    rgb = to_rgb_array(image)  # grayscale / RGBA uploads -> RGB uint8
    pred = predictor.predict(rgb, vocabulary, other=other)
    fractions = pred.pixel_fractions()
    return (
        overlay(rgb, pred.labels, pred.class_names, alpha),
        np.asarray(legend(fractions, pred.class_names, font_size=16)),
        fractions,
    )


def build_demo(factory: Callable[[str], object], model_names: list[str], title: str = "SAN: segment anything you name"):
    """The Gradio Blocks app; ``factory(name)`` returns a :class:`san.SANPredictor`."""
    import gradio as gr

    models = _Models(factory)

    def run(image, vocabulary, other, model_name):
        if image is None:
            raise gr.Error("upload an image first")
        try:
            with collect_warnings() as notes:
                predictor = models.get(model_name)
                result = segment(predictor, image, vocabulary or "", other)
        except (ValueError, TypeError, RuntimeError, OSError, MemoryError) as e:
            raise gr.Error(str(e) or type(e).__name__) from None
        for note in notes:
            gr.Warning(note)
        return (*result, "\n".join(f"Warning: {n}" for n in notes) or "No warnings.")

    with gr.Blocks(title="SAN demo") as demo:
        gr.Markdown(
            f"# {title}\nOpen-vocabulary semantic segmentation with the Side Adapter Network (Xu et al., CVPR 2023). "
            "Separate class names with commas; `road|route` is one class with synonyms."
        )
        with gr.Row():
            image = gr.Image(type="numpy", label="Image", elem_id="input_image", image_mode="RGB")
            result = gr.Image(type="numpy", label="Segmentation", elem_id="output_image", format="png")
        with gr.Row():
            model = gr.Dropdown(model_names, value=model_names[0], label="Model", elem_id="model")
            other = gr.Dropdown(
                ["coco-all", "coco-stuff", "none"],
                value="coco-all",
                label="Vocabulary expansion (distractor pixels shown as 'other')",
                elem_id="other",
            )
        vocabulary = gr.Textbox(value=DEFAULT_VOCABULARY, label="Class names", lines=3, elem_id="vocabulary")
        button = gr.Button("Segment", variant="primary", elem_id="submit")
        status = gr.Textbox(label="Messages", elem_id="status", interactive=False, lines=2)
        with gr.Row():
            key = gr.Image(type="numpy", label="Legend", elem_id="legend", format="png")
            shares = gr.Label(label="Pixel share", elem_id="fractions")
        button.click(run, [image, vocabulary, other, model], [result, key, shares, status])
    return demo


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="san demo", description="Start the local SAN web demo (Gradio).")
    p.add_argument("--weights", "-w", default=None, help="checkpoint file / URL / official name shown first")
    p.add_argument("--config-file", default=None, help="config of --weights when it is a file or URL")
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("san demo needs gradio: pip install -e '.[demo]' in the clone (or pip install gradio)", file=sys.stderr)
        return 2
    from san.inference.predictor import SANPredictor
    from san.model_zoo import get_model_info

    names = list(MODELS)
    custom = None
    if args.weights is not None and get_model_info(args.weights) is None:
        custom = f"custom: {os.path.basename(str(args.weights))}"
        names.insert(0, custom)
    elif args.weights is not None:
        first = get_model_info(args.weights).name
        names.remove(first)
        names.insert(0, first)

    def factory(name: str) -> SANPredictor:
        kw = {"device": args.device, "precision": args.precision, "opts": args.opts}
        if name == custom:
            return SANPredictor.from_pretrained(
                args.config_file or "san_clip_vit_res4_coco", weights=args.weights, **kw
            )
        return SANPredictor.from_pretrained(name, **kw)

    build_demo(factory, names).launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
