"""SSD colour jitter (``INPUT.COLOR_AUG_SSD``) as a detectron2 transform.

The official mapper uses ``detectron2.projects.point_rend.ColorAugSSDTransform``, which needs
OpenCV for its HSV conversions; that transform is used whenever OpenCV is importable.
"""

from __future__ import annotations

from detectron2.data import transforms as T

__all__ = ["build_color_aug_ssd"]


def build_color_aug_ssd(img_format: str) -> T.Transform:
    """The official SSD colour jitter for images in ``img_format`` ("RGB" or "BGR")."""
    try:
        from detectron2.projects.point_rend import ColorAugSSDTransform
    except ImportError as e:
        raise ImportError(
            "INPUT.COLOR_AUG_SSD needs detectron2's point_rend project and OpenCV: "
            "pip install opencv-python-headless (or set INPUT.COLOR_AUG_SSD False)"
        ) from e
    return ColorAugSSDTransform(img_format=img_format)
