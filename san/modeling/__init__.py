"""SAN modules in plain PyTorch; they take plain constructor arguments and never see a config."""

from .clip_adapter import ClipFeatureExtractor, ClipFeatures, RecognitionHead
from .mask_decoder import MaskDecoder
from .san import SAN
from .side_adapter import SideAdapterNetwork, SideViT
from .text_classifier import TextClassifier

__all__ = [
    "SAN",
    "ClipFeatureExtractor",
    "ClipFeatures",
    "RecognitionHead",
    "SideAdapterNetwork",
    "SideViT",
    "MaskDecoder",
    "TextClassifier",
]
