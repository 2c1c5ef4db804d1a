"""Data: named datasets, readers of the on-disk formats, augmentations, mappers and loaders.

Importing :mod:`san.data` is cheap; the loader and mapper modules import torch when used.
"""

from . import catalog
from .catalog import (
    DatasetSpec,
    dataset_root,
    get_dataset,
    list_datasets,
    register_dataset,
    register_datasets_from_yaml,
    unregister_dataset,
)

__all__ = list(catalog.__all__)
