"""A newcomer's first hour: each rough edge met when san was tried as a new user would, through the real
``san`` entry point in a subprocess where it is a command-line matter. Each test asserts the exit code,
that the message names the problem and what to do, and that nothing partial is left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import san
from san.inference.outputs import OutputError, check_output_dir
from san.inference.visualize import legend

ROOT = Path(__file__).resolve().parents[2]
OPTS = ["INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "64"]


def san_cmd(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed ``san`` console script (``python -m san`` where it is not on PATH)."""
    exe = shutil.which("san")
    cmd = [exe] if exe else [sys.executable, "-m", "san"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


def predict(tiny: dict, *args: str, weights: str | None = None, env: dict | None = None):
    base = ["predict", "--config-file", tiny["yaml"], "--weights", weights or tiny["pth"], "--vocabulary", "a, b"]
    return san_cmd(*base, *args, *OPTS, env=env)


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("san ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


# -- start-up ---------------------------------------------------------------------------------------
def test_help_version_and_usage_errors_answer_before_torch_is_imported():
    code = (
        "import sys\nfrom san.apps.cli import main\n"
        "for argv in (['--help'], ['--version'], ['predict', '--help'], ['train', '--help'], ['predict']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "TORCH False" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    r = san_cmd("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"san {san.__version__}"
    r = san_cmd("--help")
    assert r.returncode == 0 and "predict" in r.stdout and "--version" in r.stdout


# -- the output folder ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["a file", "below a file", "read-only filesystem"])
def test_unusable_output_is_a_one_line_usage_error_before_the_model(tiny, tmp_path, case):
    (tmp_path / "taken").write_text("a file")
    out = {
        "a file": tmp_path / "taken",
        "below a file": tmp_path / "taken" / "out",
        "read-only filesystem": Path("/proc/sys/san_out"),  # not writable, even for root
    }[case]
    r = predict(tiny, "--input", tiny["photo"], "--output", str(out), weights=str(tmp_path / "missing.pth"))
    line = _one_line(r.stderr)
    assert r.returncode == 2, r.stderr
    want = {
        "a file": "is a file, not a folder",
        "below a file": "which is a file",
        "read-only filesystem": "not writable",
    }
    assert want[case] in line and "--output" in line  # the output check ran first: the weights were not looked at
    assert (tmp_path / "taken").read_text() == "a file" and not (tmp_path / "taken").is_dir()


def test_an_existing_unwritable_folder_is_refused_up_front(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == out else real(p, mode))  # root ignores chmod
    with pytest.raises(OutputError, match="the folder is not writable"):
        check_output_dir(out)
    with pytest.raises(OutputError, match=r"its parent .*out is not writable"):
        check_output_dir(out / "new")
    assert check_output_dir(tmp_path / "fresh" / "deeper") == tmp_path / "fresh" / "deeper"
    assert not (tmp_path / "fresh").exists()  # checking creates nothing


def test_alpha_outside_zero_one_is_a_usage_error(tiny, tmp_path):
    r = predict(tiny, "--input", tiny["photo"], "--output", str(tmp_path / "o"), "--alpha", "2")
    assert r.returncode == 2 and "outside 0..1" in r.stderr and not (tmp_path / "o").exists()


# -- weights and configs ------------------------------------------------------------------------------
def test_truncated_and_code_carrying_checkpoints(tiny, tmp_path):
    data = Path(tiny["pth"]).read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    r = predict(tiny, "--input", tiny["photo"], "--output", str(tmp_path / "o"), weights=str(tmp_path / "cut.pth"))
    line = _one_line(r.stderr)
    assert r.returncode == 2 and "cut.pth is truncated or not a checkpoint" in line and "MiB" in line
    code = tmp_path / "code.pth"
    subprocess.run(
        [sys.executable, "-c", f"import torch\nclass Hook: pass\ntorch.save({{'model': Hook()}}, {str(code)!r})"],
        check=True,
    )
    r = predict(tiny, "--input", tiny["photo"], "--output", str(tmp_path / "o"), weights=str(code))
    line = _one_line(r.stderr)
    assert r.returncode == 2 and "contains pickled Python objects" in line and "weights_only=False" in line
    assert "does not run code" in line and not (tmp_path / "o").exists()


def test_offline_official_weights_fail_fast_once_with_the_way_out(tiny, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    start = time.monotonic()
    args = ["--input", tiny["photo"], "--vocabulary", "a", "--weights", "san-vit-b-16", "-o", str(tmp_path / "o")]
    r = san_cmd("predict", *args, env=env)
    took = time.monotonic() - start
    line = _one_line(r.stderr)
    assert r.returncode == 2 and "HF_HUB_OFFLINE" in line and "--weights /path/to/san_vit_b_16.pth" in line
    assert r.stderr.count("san_vit_b_16.pth is not in the Hugging Face cache") == 1  # said once
    assert took < 60  # no download retries (a generous bound on a loaded machine; it takes seconds)


def test_a_hostile_yaml_expression_is_bounded(tiny, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        f"_BASE_: {tiny['yaml']}\nINPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval ['list(range(1000000000000))']\n"
    )
    args = ["--config-file", str(bomb), "--weights", "none", "--input", tiny["photo"], "--vocabulary", "a"]
    r = san_cmd("predict", *args, "-o", str(tmp_path / "o"))
    line = _one_line(r.stderr)
    assert r.returncode == 2 and "builds 1000000000000 items; at most 10000" in line


def test_bundled_configs_as_bases_from_any_install(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("_BASE_: san://san_clip_vit_res4_coco.yaml\nSOLVER:\n  MAX_ITER: 7\n")
    cfg = san.get_cfg()
    cfg.merge_from_file(str(own))
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.SAN.CLIP_MODEL_NAME == "ViT-B/16"  # the bundled base applied
    own.write_text("_BASE_: san://no_such.yaml\n")
    with pytest.raises(FileNotFoundError, match="bundled config .*san_clip_vit_res4_coco.yaml"):
        san.get_cfg().merge_from_file(str(own))
    own.write_text("_BASE_: ../nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"_BASE_ file .*nowhere.yaml does not exist.*san://NAME.yaml"):
        san.get_cfg().merge_from_file(str(own))


# -- images and pictures --------------------------------------------------------------------------------
def test_multi_frame_files_say_which_frame_is_used_and_tiny_images_work(tiny, tmp_path):
    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (10, 120, 240)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    out = tmp_path / "o"
    files = [str(tmp_path / n) for n in ("anim.gif", "pages.tif", "dot.png")]
    r = predict(tiny, "--input", *files, "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{files[0]} has 3 frames (pages); using the first one" in r.stderr
    assert f"{files[1]} has 3 frames (pages); using the first one" in r.stderr
    overlay = np.asarray(Image.open(out / "anim_overlay.png"))
    assert overlay.shape == (20, 30, 3)  # the overlay at the photo's size; the legend is its own file
    assert json.loads((out / "dot.json").read_text())["legend_png"] == "dot_legend.png"


def test_the_legend_of_a_one_pixel_image_has_no_phantom_line():
    row = 12 + 8
    one = legend({"sky": 1.0}, ["sky"], height=1, font_size=12)
    assert one.height == 1 * row + 16  # one line: no "... 0 more" below it
    many = legend({f"c{i}": 0.1 for i in range(10)}, [f"c{i}" for i in range(10)], height=4 * row + 16, font_size=12)
    assert many.height == 4 * row + 16  # three lines and "... 7 more"


@pytest.mark.parametrize("name", ["café crème", "кошка", "猫の木", "🐱 cat"])
def test_legend_draws_class_names_in_any_script(name):
    """Each character has a real glyph: its ink differs from the font's missing-glyph box."""
    from san.inference.fonts import font_for, missing_characters

    font = font_for(name, 24)
    assert missing_characters(name, font.path) == set(), (name, font.path)

    def ink(ch: str) -> bytes:
        mask = font.getmask(ch)
        return bytes(str(mask.size), "ascii") + np.asarray(mask).tobytes()

    tofu = ink("\U0010fffd")  # a private-use code point: the font's missing-glyph box
    for ch in name.replace(" ", ""):
        assert ink(ch) != tofu, (name, ch, font.path)


def test_a_long_vocabulary_shows_one_progress_bar_not_a_log_line_per_chunk(tiny_model, caplog, capsys):
    clf = tiny_model.ov_classifier
    clf.set_batch_size(64)
    names = [f"thing number {i}" for i in range(400)]  # 400 x 14 prompts: 88 chunks
    with caplog.at_level("INFO"):
        clf.embed_names(names)
    assert [r for r in caplog.records if r.name.startswith("san.modeling")] == []
    err = capsys.readouterr().err
    assert err.count("encoding class names:   0%") == 1 and "/5600 [" in err  # one bar over all 5600 prompts


# -- interruption ------------------------------------------------------------------------------------------
def test_ctrl_c_stops_with_one_line_exit_130_and_only_complete_outputs(tiny, tmp_path):
    images = tmp_path / "many"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(400):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
    out = tmp_path / "o"
    exe = shutil.which("san")
    cmd = [exe] if exe else [sys.executable, "-m", "san"]
    args = ["predict", "--config-file", tiny["yaml"], "--weights", tiny["pth"], "--vocabulary", "a, b"]
    args += ["--input", str(images), "-o", str(out), *OPTS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a shell that started the tests in the background ignores SIGINT for its children: restore the default
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(
        [*cmd, *args], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, preexec_fn=restore
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(out.glob("*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if "interrupted" in x)
    done = int(line.split("interrupted after ")[1].split(" of 400")[0])
    stems = {p.name.split("_")[0].split(".")[0] for p in out.iterdir()}  # no summary: the run did not end
    assert len(stems) == done  # exactly the images it says were done
    for stem in stems:  # each with all its files, and no temporary file anywhere
        assert {p.name for p in out.glob(f"{stem}*")} == {
            f"{stem}{s}" for s in ("_labels.png", "_overlay.png", "_legend.png", ".json")
        }
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# -- documentation a newcomer reads first --------------------------------------------------------------------
def test_install_instructions_work_from_a_clone():
    texts = {
        p: p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "san").rglob("*.py")]
    }
    bad = [str(p.relative_to(ROOT)) for p, t in texts.items() if "san-seg[" in t]
    assert bad == []  # never `pip install "san-seg[...]"`: the package is not on PyPI
    readme = texts[ROOT / "README.md"]
    first_screen = "\n".join(readme.splitlines()[:40])
    assert (
        'pip install -e ".[demo]"' in readme and "bash .ci/run" in first_screen and "pip install -e ." in first_screen
    )
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme  # the CPU-only install line
