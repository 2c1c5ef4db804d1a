"""Install detectron2 0.6 (Python code only, CPU) into this Python, for san's detectron2 integration.

    python scripts/install_detectron2.py            # from a clone of san; torch must be installed

Why a script: detectron2 publishes no wheels, and building it from GitHub needs a C++/CUDA toolchain.
PyPI's ``pb1-detectron2`` is the upstream v0.6 source without the C++ sources of its compiled ops, so
this script installs it without them and brings the 2021 code up to date with today's libraries:

- no compiled extension; ``detectron2._C`` becomes a module that raises on use (san's integration
  never calls it: SAN has no deformable convolutions or ROI ops);
- NumPy >= 1.24 removed the ``np.int``/``np.float``/``np.bool``/``np.object`` aliases;
- Pillow >= 10 removed ``Image.LINEAR`` (it is ``Image.BILINEAR``);
- setuptools >= 81 dropped ``pkg_resources``, which the model zoo imports;
- the sdist keeps the model-zoo configs under ``detectron2/model_zoo/configs``.

With a toolchain, ``pip install 'git+https://github.com/facebookresearch/detectron2.git'`` (the
upstream route, with the compiled ops) works as well.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.6"
PACKAGE = f"pb1-detectron2=={VERSION}"

_NUMPY_ALIASES = re.compile(r"\bnp\.(int|float|bool|object)\b(?![_0-9])")

_PLACEHOLDER = '''"""detectron2's compiled ops are not built in this install (no C++ sources in the sdist)."""


def __getattr__(name):
    raise NotImplementedError(f"detectron2._C.{name} is not available: it needs detectron2 built from source")
'''

_PKG_RESOURCES = """try:
    import pkg_resources
except ImportError:  # setuptools >= 81: only resource_filename is used
    class pkg_resources:
        @staticmethod
        def resource_filename(package, name):
            import importlib

            return os.path.join(os.path.dirname(importlib.import_module(package).__file__), name)
"""


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"install_detectron2: {path.name} is not the expected v{VERSION} source ({old!r})")
    path.write_text(text.replace(old, new))


def patch(source: Path) -> int:
    """Apply the changes above to an unpacked sdist; returns how many Python files were modernised."""
    _replace_once(source / "setup.py", "    ext_modules=get_extensions(),\n", "    ext_modules=[],\n")
    _replace_once(
        source / "setup.py",
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        'package_data={"detectron2.model_zoo": ["configs/*.yaml", "configs/**/*.yaml", "configs/**/*.py"]},',
    )
    (source / "detectron2" / "_C.py").write_text(_PLACEHOLDER)
    _replace_once(source / "detectron2" / "model_zoo" / "model_zoo.py", "import pkg_resources\n", _PKG_RESOURCES)
    changed = 0
    for path in [*source.glob("detectron2/**/*.py"), *source.glob("projects/**/*.py")]:
        text = path.read_text()
        new = _NUMPY_ALIASES.sub(r"\1", text).replace("Image.LINEAR", "Image.BILINEAR")
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


def main() -> int:
    try:
        import torch  # noqa: F401  (detectron2's setup.py imports it)
    except ImportError:
        print("install_detectron2: install torch first (see the README)", file=sys.stderr)
        return 2
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory(prefix="detectron2-") as work:
        download = [*pip, "download", "-q", "--no-deps", "--no-build-isolation", "-d", work, PACKAGE]
        subprocess.run(download, check=True)  # the sdist (its metadata step imports torch: no isolation)
        archive = next(Path(work).glob("pb1-detectron2-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        source = Path(work) / archive.name.removesuffix(".tar.gz")
        print(f"install_detectron2: modernised {patch(source)} files of detectron2 {VERSION}")
        subprocess.run([*pip, "install", "-q", "--no-build-isolation", str(source)], check=True)
    check = "from detectron2.evaluation import SemSegEvaluator; import detectron2; print(detectron2.__version__)"
    version = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True, text=True).stdout.strip()
    print(f"install_detectron2: detectron2 {version} installed (Python code, CPU; no compiled ops)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
