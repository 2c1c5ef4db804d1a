"""A newcomer's first hour, second pass: quiet tools and one line per error, through the real ``san``
entry point in a subprocess. Each test names the row of the report it answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .test_first_hour import OPTS, ROOT, _one_line, predict, san_cmd


def _photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (36 + 4 * i, 48, 3), dtype=np.uint8)).save(folder / f"good{i}.png")
    return folder


# -- quiet tools --------------------------------------------------------------------------------------------
def test_index_progress_and_failures_carry_the_commands_name(tiny, tmp_path):
    inputs = _photos(tmp_path / "in", 3)
    (inputs / "empty.png").write_bytes(b"")
    model = ["--config-file", tiny["yaml"], "--weights", tiny["pth"]]
    r = san_cmd("index", str(inputs), *model, "--output", str(tmp_path / "idx"), *OPTS)
    assert r.returncode == 1, r.stderr[-3000:]  # one image failed
    assert "san index: FAILED" in r.stderr and "san index:" in r.stderr.replace("FAILED", "")
    assert "san predict" not in r.stderr


# -- one line per error -------------------------------------------------------------------------------------
def test_a_garbage_checkpoint_gets_our_line_only(tiny, tmp_path):
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(3000))
    with zipfile.ZipFile(tmp_path / "hollow.pth", "w") as z:
        z.writestr("archive/data.pkl", b"not a pickle")
    for name, what in (("noise.pth", "not a zip archive"), ("hollow.pth", "without readable PyTorch records")):
        r = predict(tiny, "--input", tiny["photo"], "--output", str(tmp_path / "o"), weights=str(tmp_path / name))
        line = _one_line(r.stderr)
        assert r.returncode == 2 and f"{name} is truncated or not a checkpoint" in line and what in line
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # no PyTorch paragraph after it
        assert "weights_only" not in r.stderr and "issue" not in r.stderr


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_folder_that_cannot_be_created_is_refused_up_front(tiny):
    r = predict(tiny, "--input", tiny["photo"], "--output", "/proc/sanout")
    line = _one_line(r.stderr)
    assert r.returncode == 2 and "--output /proc/sanout: cannot create folders" in line and "choose another" in line


def test_each_failure_is_a_line_of_its_own_and_an_empty_file_says_so(tiny, tmp_path):
    inputs = _photos(tmp_path / "in", 3)
    (inputs / "empty.jpg").write_bytes(b"")
    (inputs / "notes.png").write_text("hello")
    r = predict(tiny, "--input", str(inputs), "--output", str(tmp_path / "o"))
    assert r.returncode == 1, r.stderr[-3000:]
    failed = [line for line in r.stderr.split("\n") if "FAILED" in line]
    assert len(failed) == 2 and all(line.startswith("san predict: FAILED ") for line in failed), failed
    assert failed[0].endswith("empty.jpg: empty file (0 bytes)")
    assert "notes.png: not an image file" in failed[1]


def test_search_after_the_weights_moved_says_to_pass_weights(tiny, tmp_path):
    weights = tmp_path / "w.pth"
    shutil.copy(tiny["pth"], weights)
    index = tmp_path / "idx"
    model = ["--config-file", tiny["yaml"], "--weights", str(weights)]
    r = san_cmd("index", str(_photos(tmp_path / "in")), *model, "--output", str(index), *OPTS)
    assert r.returncode == 0, r.stderr[-3000:]
    moved = weights.rename(tmp_path / "moved.pth")
    r = san_cmd("search", str(index), "a cat")
    line = _one_line(r.stderr)
    assert r.returncode == 2 and f"built with the weights {weights}" in line and "pass --weights" in line
    r = san_cmd("search", str(index), "a cat", "--weights", str(moved))
    assert r.returncode == 0 and "good" in r.stdout, r.stderr[-3000:]


def test_the_offline_hint_names_the_command_that_was_run(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = san_cmd("export", "hub", "--weights", "san-vit-b-16", "-o", str(tmp_path / "hub"), env=env)
    line = _one_line(r.stderr)
    assert r.returncode == 2 and "`san export hub --weights /path/to/san_vit_b_16.pth ...`" in line
    assert "san predict" not in line and not (tmp_path / "hub").exists()


# -- fast answers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "idx", ""], "the query is empty"),
        (["search", "idx", "a cat", "--device", "gpu"], "unknown device 'gpu'"),
        (["predict", "-i", "x.png", "-v", "a", "--device", "cuda:x"], "unknown device 'cuda:x'"),
        (["index", "x.png", "-o", "idx", "--device", "gpu0"], "unknown device 'gpu0'"),
    ],
)
def test_bad_arguments_are_refused_before_the_heavy_imports(argv, message):
    code = (
        "import sys\nfrom san.apps.cli import main\n"
        f"code = main({argv!r})\n"
        "print('EXIT', code, 'TORCH', 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "EXIT 2 TORCH False" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert message in _one_line(r.stderr)


@pytest.mark.parametrize("command", ["train", "prepare-data", "predict", "demo", "index", "search", "export"])
def test_every_command_runs_as_a_python_module(command):
    module = f"san.apps.{command.replace('-', '_')}"
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith(f"usage: san {command}"), (r.stdout[:300], r.stderr[-1000:])


# -- what a run records -------------------------------------------------------------------------------------
def test_the_outputs_record_the_overrides_and_help_and_summary_agree_on_workers(tiny, tmp_path):
    import json
    import re

    out = tmp_path / "o"
    r = predict(tiny, "--input", tiny["photo"], "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((out / "photo.json").read_text())
    assert record["overrides"] == OPTS  # the model the overrides made, not only the config's name
    summary = json.loads((out / "san_predict_summary.json").read_text())
    shown = re.search(
        r"threads decoding and writing \(default (\d+)", " ".join(san_cmd("predict", "--help").stdout.split())
    )
    assert shown and summary["workers"] == int(shown.group(1))
    # other overrides make another model: --resume redoes the image instead of keeping it
    base = ["predict", "--config-file", tiny["yaml"], "--weights", tiny["pth"], "--vocabulary", "a, b"]
    r = san_cmd(*base, "--input", tiny["photo"], "--output", str(out), "--resume", *OPTS, "SEED", "3")
    assert r.returncode == 0 and "already complete" not in r.stdout, r.stdout + r.stderr
    assert json.loads((out / "photo.json").read_text())["overrides"] == [*OPTS, "SEED", "3"]


def test_a_refusal_in_two_processes_is_said_once(tiny, tmp_path):
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(3000))
    out = tmp_path / "o"
    r = predict(
        tiny,
        "--input",
        tiny["photo"],
        "--output",
        str(out),
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",
        weights=str(tmp_path / "noise.pth"),
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.count("noise.pth is truncated or not a checkpoint") == 1, r.stderr  # both processes met it
    assert "Traceback" not in r.stderr
