"""File names and format names (a light module: command lines use them without importing torch)."""

__all__ = ["FORMATS", "IMAGE_EXTENSIONS"]

# the dataset formats san.data.own reads
FORMATS = ("folder", "coco", "coco-panoptic", "yolo", "labelme", "cvat", "hf", "san")

# the file extensions taken as images when a folder is searched
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
