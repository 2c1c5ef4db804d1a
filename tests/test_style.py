"""House rules that a reviewer would otherwise check by hand: ruff lint and format clean (line length
120, configured in pyproject.toml), files in san/ at most 500 lines, ``# fmt: skip`` only with a
reason on the line above."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ["san", "tests", "scripts"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    return subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ruff() -> None:
    if shutil.which("ruff") is None and _ruff("--version").returncode != 0:
        pytest.skip("ruff is not installed (the test extra installs it)")


def test_ruff_lint_is_clean(ruff):
    r = _ruff("check", *CODE)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_ruff_format_is_clean(ruff):
    r = _ruff("format", "--check", *CODE)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_no_package_file_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "san").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}


def test_fmt_skip_only_with_a_reason():
    bare = []
    for p in [q for d in CODE for q in (ROOT / d).rglob("*.py")]:
        lines = p.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.rstrip().endswith("# fmt: skip"):
                above = lines[i - 1] if i else ""
                start = next((j for j in range(i, -1, -1) if not lines[j].startswith((" ", ")"))), 0)
                if "fmt: skip" not in lines[start - 1] if start else True:
                    bare.append(f"{p.relative_to(ROOT)}:{i + 1} {above.strip()[:40]}")
    assert bare == []
