"""Without detectron2: all of san outside san.integrations imports, and the integration says what to install.

One subprocess with ``sys.modules["detectron2"] = None`` (detectron2 unimportable even where it is
installed) runs every check and reports them as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_net_d2.py"

_CHECKS = f"""
import importlib, json, pkgutil, runpy, sys
sys.modules["detectron2"] = None
import san
out = {{}}
names = [m.name for m in pkgutil.walk_packages(san.__path__, "san.")
         if not m.name.startswith("san.integrations.detectron2") and m.name != "san.__main__"]
for n in names:
    importlib.import_module(n)
import san.integrations
out["imported"] = names
out["detectron2_loaded"] = sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "detectron2" and v)
try:
    import san.integrations.detectron2
    out["integration"] = "imported"
except ImportError as e:
    out["integration"] = str(e)
try:
    runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
    out["script"] = "ran"
except ImportError as e:
    out["script"] = str(e)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def report() -> dict:
    r = subprocess.run([sys.executable, "-c", _CHECKS], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_module_outside_the_integration_imports_without_detectron2(report):
    imported = set(report["imported"])
    assert {"san.build", "san.config", "san.checkpoint", "san.modeling.san", "san.data.catalog"} <= imported
    assert report["detectron2_loaded"] == []


def test_using_the_integration_without_detectron2_says_what_to_install(report):
    msg = report["integration"]
    assert "needs detectron2, which is not installed" in msg
    assert "pip install" in msg and "python scripts/install_detectron2.py" in msg and "README" in msg
    assert (Path(__file__).resolve().parents[2] / "scripts" / "install_detectron2.py").is_file()  # in a clone


def test_the_training_script_without_detectron2_says_what_to_install(report):
    assert "needs detectron2, which is not installed" in report["script"]
