"""Packaging for san (``pip install .``; extras: train, data, demo, serve, ray, export, test, dev)."""

from setuptools import find_packages, setup

_TEST = [
    "pytest",
    "scipy",
    "tensorboard",
    "tifffile",
    "matplotlib",
    "scikit-image",
    "gradio>=4",
    "selenium",
    "opencv-python-headless",
    "ruff",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "supervision",
    "gradio_client",
    "litserve",  # san serve (the serve extra)
    "prometheus-client",
    "requests",
    "datasets",  # the Hugging Face dataset format of san train --data
    "pycocotools",  # the COCO tests build their RLE and compare polygons with it
    "ray[data]",  # san.integrations.ray on a local Ray instance
]

setup(
    name="san-seg",
    version="0.1.0",
    description="Side Adapter Network (SAN) for open-vocabulary semantic segmentation, in plain PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # the top-level configs/ folder ships inside the package as san.configs
    packages=find_packages(include=["san", "san.*"]) + ["san.configs"],
    package_dir={"san.configs": "configs"},
    package_data={
        "san": ["assets/classes/*.txt", "assets/classes/*.json", "assets/prompts/*.txt"],
        "san.configs": ["*.yaml"],
    },
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "open_clip_torch>=2.20",
        "timm>=0.9",
        "fvcore",
        "pyyaml",
        "numpy",
        "pillow",
        "huggingface_hub",
        "tqdm",
        "safetensors",
        "fonttools",  # character maps of the legend fonts
    ],
    extras_require={
        "train": ["scipy", "tensorboard", "tifffile", "matplotlib"],
        # san train --data with a Hugging Face datasets dataset (the other formats need nothing more)
        "data": ["datasets"],
        "demo": ["gradio>=4"],
        # san serve: the HTTP server (LitServe), its Prometheus metrics, and the Python client's HTTP
        "serve": ["litserve", "prometheus-client", "requests"],
        # Ray Data batch inference (san.integrations.ray) and its Parquet region table (pyarrow)
        "ray": ["ray[data]"],
        # deployment: ONNX export (onnx, onnxscript), running it (onnxruntime), supervision's Detections
        "export": ["onnx", "onnxscript", "onnxruntime", "supervision"],
        # what the test suite needs (OpenCV only for the colour-jitter parity check against OpenCV itself)
        "test": _TEST,
        "dev": _TEST,
    },
    entry_points={"console_scripts": ["san = san.apps.cli:main"]},
)
