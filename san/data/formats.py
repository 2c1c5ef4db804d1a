"""The names of the dataset formats :mod:`san.data.own` reads (a light module: command lines list them
without importing the readers)."""

__all__ = ["FORMATS"]

FORMATS = ("folder", "coco", "coco-panoptic", "yolo", "labelme", "cvat", "hf", "san")
