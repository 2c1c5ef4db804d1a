"""detectron2's ``DetectionCheckpointer`` reading and loading through san's one loader.

Files are read weights-only (:func:`san.checkpoint.read_checkpoint`: no pickle code ever runs, so
Caffe2 ``.pkl`` files are refused) and the model state goes through :func:`san.load_checkpoint`:
the same quirk filter (a checkpoint fine-tuned with another class count loads, saying so) and the
same clear error for a checkpoint of another architecture as every other san loader, instead of
detectron2's warning that leaves mismatched tensors random.
"""

from __future__ import annotations

from typing import Any

from detectron2.checkpoint import DetectionCheckpointer

from san.checkpoint import load_checkpoint, read_checkpoint

__all__ = ["SANCheckpointer"]


class SANCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` (same files, same resume logic) with san's reading and loading."""

    def _load_file(self, filename: str) -> dict[str, Any]:
        ckpt = read_checkpoint(filename)
        return ckpt if "model" in ckpt else {"model": ckpt}

    def _load_model(self, checkpoint: dict[str, Any]) -> None:
        load_checkpoint(self.model, checkpoint.pop("model"))
        return None
