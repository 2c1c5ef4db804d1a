"""Data: named datasets, readers of the on-disk formats, augmentations, mappers and loaders.

Importing :mod:`san.data` is cheap; the loader and mapper modules import torch when used.
"""

from . import catalog
from .catalog import (
    DatasetSpec as DatasetSpec,
)
from .catalog import (
    dataset_root as dataset_root,
)
from .catalog import (
    get_dataset as get_dataset,
)
from .catalog import (
    list_datasets as list_datasets,
)
from .catalog import (
    register_dataset as register_dataset,
)
from .catalog import (
    register_datasets_from_yaml as register_datasets_from_yaml,
)
from .catalog import (
    unregister_dataset as unregister_dataset,
)

__all__ = list(catalog.__all__)
