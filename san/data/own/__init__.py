"""Your own data, in the formats people have: read (:func:`read_dataset`, format detected from the
files), check (:func:`check_dataset`) and write it as san trains on it (:func:`prepare_data`).

Formats: a folder of images + class-id masks + ``classes.txt`` (``folder``), COCO JSON with polygons or
RLE (``coco``), COCO panoptic (``coco-panoptic``), YOLO segmentation (``yolo``), labelme (``labelme``),
CVAT's Segmentation mask 1.1 (``cvat``), a Hugging Face ``datasets`` dataset (``hf``) and the
folder san itself writes (``san``).
"""

from .base import FormatError, OwnDataset, Sample, ignore_for
from .prepare import DataReport, check_dataset, make_split, prepare_data, summary_table
from .readers import FORMATS, MANIFEST, detect_format, read_dataset

__all__ = [
    "FORMATS",
    "MANIFEST",
    "DataReport",
    "FormatError",
    "OwnDataset",
    "Sample",
    "check_dataset",
    "detect_format",
    "ignore_for",
    "make_split",
    "prepare_data",
    "read_dataset",
    "summary_table",
]
