"""Without detectron2: all of san outside san.integrations imports, and the integration says what to install."""

from __future__ import annotations

import subprocess
import sys

_BLOCK = "import sys\nsys.modules['detectron2'] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK + code], capture_output=True, text=True, timeout=120)


def test_every_module_outside_the_integration_imports_without_detectron2():
    code = (
        "import importlib, pkgutil, san\n"
        "names = [m.name for m in pkgutil.walk_packages(san.__path__, 'san.')\n"
        "         if not m.name.startswith('san.integrations.detectron2')]\n"
        "for n in names:\n"
        "    importlib.import_module(n)\n"
        "import san.integrations\n"
        "assert 'detectron2' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
        "print(len(names))\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) >= 10  # san, san.build, san.modeling.* ... were all imported


def test_using_the_integration_without_detectron2_says_what_to_install():
    r = _run(
        "try:\n"
        "    import san.integrations.detectron2\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    print('imported')\n"
    )
    assert r.returncode == 0, r.stderr
    msg = r.stdout
    assert "needs detectron2, which is not installed" in msg
    assert "pip install" in msg and "install_detectron2.sh" in msg and "README" in msg


def test_the_training_script_without_detectron2_says_what_to_install():
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "train_net_d2.py"
    r = _run(f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')")
    assert r.returncode != 0 and "needs detectron2, which is not installed" in r.stderr
