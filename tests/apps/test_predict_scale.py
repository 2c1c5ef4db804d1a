"""``san predict`` at the scale of a dataset, with the official tiny model of the golden v2 file (labels
vary over its images): batches and background threads write what one image at a time writes; the
summary counts and explains; --resume keeps exactly the complete outputs made with the same settings
and finishes a killed run as if it had not been killed; two processes (torchrun, gloo on the CPU)
write the one-process outputs, each image once; --save-encodings writes encodings that re-label to
the same label maps."""

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
from san.apps.cli import main as san_main
from san.apps.predict import SUMMARY
from san.inference.encoding import ImageEncoding
from san.inference.predictor import SANPredictor
from san.inference.runner import PredictionRun

# rerun in CI under each kernel setting of the float-noise matrix; every run compared here on one thread
pytestmark = [pytest.mark.numeric, pytest.mark.usefixtures("one_thread")]

OPTS = ["INPUT.MIN_SIZE_TEST", "250", "INPUT.MAX_SIZE_TEST", "1000"]
VOC = "cat, dog, grass, sky, traffic light"


@pytest.fixture(scope="module")
def golden(golden_files, tmp_path_factory) -> dict:
    """The golden model's files, and a folder of 9 photos: the golden images, their mirrors (same
    sizes: they batch together), crops (other sizes) and one enlarged copy (another photo size with the
    same model input size as its original)."""
    root = tmp_path_factory.mktemp("scale")
    a, b = golden_files["images"]
    photos = {
        "a": a,
        "a_mirror": a[:, ::-1],
        "b": b,
        "b_mirror": b[:, ::-1],
        "a_crop": a[20:, 10:],
        "b_crop": b[:300, :260],
        "a_big": np.asarray(Image.fromarray(a).resize((660, 500), Image.BILINEAR)),
        "b_top": b[:200],
        "a_left": a[:, :200],
    }
    d = root / "images"
    d.mkdir()
    for name, im in photos.items():
        Image.fromarray(np.ascontiguousarray(im)).save(d / f"{name}.png")
    return {"yaml": golden_files["yaml"], "pth": golden_files["pth"], "dir": d, "names": sorted(photos)}


def _argv(golden: dict, out: Path, *extra: str) -> list[str]:
    model = ["--config-file", str(golden["yaml"]), "--weights", str(golden["pth"])]
    return ["predict", *model, "--input", str(golden["dir"]), "--vocabulary", VOC, "-o", str(out), *extra, *OPTS]


def _outputs(out: Path) -> dict[str, bytes | dict]:
    """Every output file (JSON parsed, without the per-run fields), the summary aside."""
    files: dict[str, bytes | dict] = {}
    for p in sorted(out.iterdir()):
        if p.name == SUMMARY:
            continue
        if p.suffix == ".json":
            record = json.loads(p.read_text())
            record.pop("device", None)
            files[p.name] = record
        else:
            files[p.name] = p.read_bytes()
    return files


@pytest.fixture(scope="module")
def reference(golden, tmp_path_factory) -> dict:
    """The plain run: one image per model call, no threads, one process."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert san_main(_argv(golden, out, "--batch-size", "1", "--workers", "0")) == 0
    return {"out": out, "files": _outputs(out)}


def _hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def test_the_reference_run_has_every_file_and_varied_labels(golden, reference):
    assert len(reference["files"]) == 4 * len(golden["names"]) and _hidden(reference["out"]) == []
    classes = [len(reference["files"][f"{n}.json"]["pixel_fractions"]) for n in golden["names"]]
    assert sum(c >= 2 for c in classes) >= 2, classes  # the equalities below are not trivial


def test_batches_and_threads_write_what_one_image_at_a_time_writes(golden, reference, tmp_path, monkeypatch):
    calls = []
    encode = san.SAN.encode_images
    monkeypatch.setattr(san.SAN, "encode_images", lambda self, x, *a: calls.append(len(x)) or encode(self, x, *a))
    out = tmp_path / "out"
    assert san_main(_argv(golden, out, "--batch-size", "4", "--workers", "3")) == 0
    assert _outputs(out) == reference["files"]
    assert sum(calls) == 9 and max(calls) == 3  # a, a_mirror and a_big (same model input size) in one call
    summary = json.loads((out / SUMMARY).read_text())
    assert (summary["images"], summary["written"], summary["resumed"], summary["failed"]) == (9, 9, 0, 0)
    assert summary["processes"] == 1 and summary["batch_size"] == 4 and summary["vocabulary"] == VOC.split(", ")
    assert 0 < summary["model_s"] <= summary["wall_s"]
    assert summary["images_per_s"] == pytest.approx(9 / summary["wall_s"], rel=1e-2)


def _spy_batches(monkeypatch) -> list:
    seen: list = []
    real = SANPredictor.predict_batch

    def spy(self, images, *a, **k):
        seen.extend(im.shape for im in images)
        return real(self, images, *a, **k)

    monkeypatch.setattr(SANPredictor, "predict_batch", spy)
    return seen


def test_resume_keeps_complete_outputs_and_redoes_the_rest(golden, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(reference["out"], out)
    (out / "a_overlay.png").unlink()  # a's set is incomplete
    for p in out.glob("b_crop*"):  # b_crop has nothing
        p.unlink()
    record = json.loads((out / "b.json").read_text())
    record["vocabulary"] = ["cat", "dog"]  # b was made with another vocabulary
    (out / "b.json").write_text(json.dumps(record))
    (out / "a_left.json").write_text("{ truncated")  # a_left's record is unreadable
    (out / ".b_top_labels.png.tmp999").write_bytes(b"left by a killed run")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("[ab]_[bt]*")}  # a_big*, b_top*
    assert len(kept) == 8
    seen = _spy_batches(monkeypatch)
    assert san_main(_argv(golden, out, "--resume")) == 0
    assert len(seen) == 4  # a, b, b_crop, a_left
    assert _outputs(out) == reference["files"] and _hidden(out) == []
    assert {p: (out / p).stat().st_mtime_ns for p in kept} == kept  # complete outputs untouched
    summary = json.loads((out / SUMMARY).read_text())
    assert (summary["written"], summary["resumed"], summary["redone"]) == (4, 5, 3)

    seen.clear()  # another vocabulary: no output is complete for it
    argv = _argv(golden, out, "--resume")
    argv[argv.index(VOC)] = "sky, cat"
    assert san_main(argv) == 0
    assert len(seen) == 9


def test_a_killed_run_resumes_to_the_uninterrupted_outputs(golden, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "san", *_argv(golden, out, "--workers", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(out.glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = {p.stem for p in out.glob("*.json")}
    assert 2 <= len(done) < 9 and not (out / SUMMARY).exists()
    assert san_main(_argv(golden, out, "--resume")) == 0
    assert _outputs(out) == reference["files"] and _hidden(out) == []
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["resumed"] == len(done) and summary["written"] + summary["resumed"] == 9  # JSON renamed last


def test_two_processes_under_torchrun_write_the_one_process_outputs(golden, reference, tmp_path):
    from san.engine.comm import find_free_port

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    cmd += [str(find_free_port()), "-m", "san", *_argv(golden, out, "--batch-size", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _outputs(out) == reference["files"] and _hidden(out) == []
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["processes"] == 2 and (summary["written"], summary["failed"]) == (9, 0)
    assert [p["images"] for p in summary["per_process"]] == [5, 4] == [p["written"] for p in summary["per_process"]]
    assert r.stdout.count("image(s) segmented into") == 1  # one final line, from rank 0


def test_each_image_falls_to_exactly_one_process_under_its_global_name(tmp_path):
    files = [Path(f"/data/{n}") for n in ("x.png", "y.png", "x.jpg", "z.png", "w.png")]
    stems = ["x_png", "y", "x_jpg", "z", "w"]
    shards = [PredictionRun(None, None, tmp_path, meta={}, rank=r, world_size=3).shard(files, stems) for r in range(3)]
    flat = [job for shard in shards for job in shard]
    assert sorted(flat) == sorted(zip(files, stems))  # every image once, with the one-process name
    assert [len(s) for s in shards] == [2, 2, 1]
    with pytest.raises(ValueError, match="rank 3 outside 0..2"):
        PredictionRun(None, None, tmp_path, meta={}, rank=3, world_size=3)


def test_saved_encodings_relabel_to_the_written_label_maps(golden, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert san_main(_argv(golden, out, "--save-encodings", "--batch-size", "2")) == 0
    predictor = SANPredictor.from_pretrained(str(golden["yaml"]), weights=golden["pth"], opts=OPTS)
    for name in golden["names"]:
        encoding = ImageEncoding.load(out / f"{name}.encoding.safetensors")
        labels = predictor.classify(encoding, VOC).labels
        np.testing.assert_array_equal(labels, np.asarray(Image.open(out / f"{name}_labels.png")), err_msg=name)
        assert (out / f"{name}_labels.png").read_bytes() == reference["files"][f"{name}_labels.png"]
        other = predictor.classify(encoding, "sky, grass").labels  # any other vocabulary, no image pass
        assert other.shape == labels.shape
    (out / "b.encoding.safetensors").unlink()
    seen = _spy_batches(monkeypatch)
    calls = []
    encode_batch = SANPredictor.encode_batch
    monkeypatch.setattr(
        SANPredictor, "encode_batch", lambda self, ims, **k: calls.extend(ims) or encode_batch(self, ims, **k)
    )
    assert san_main(_argv(golden, out, "--save-encodings", "--resume")) == 0
    assert len(calls) == 1 and seen == []  # only b, whose encoding was missing
    assert (out / "b.encoding.safetensors").is_file()


def test_a_crash_while_decoding_one_image_is_reported_and_the_rest_written(golden, tmp_path, monkeypatch, capsys):
    import san.inference.runner as runner

    real = runner.read_image

    def crash(path, *a):
        if Path(path).name == "b.png":
            raise ValueError("decoder crashed")
        return real(path, *a)

    monkeypatch.setattr(runner, "read_image", crash)
    out = tmp_path / "out"
    assert san_main(_argv(golden, out, "--workers", "2")) == 1
    assert "FAILED" in capsys.readouterr().err
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["failures"] == [{"image": str(golden["dir"] / "b.png"), "reason": "ValueError: decoder crashed"}]
    assert summary["written"] == 8 and not list(out.glob("b.*")) and not list(out.glob("b_[lo]*"))


def test_num_gpus_starts_the_processes_itself_and_reports_their_failures(golden, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    (golden["dir"] / "zz_broken.png").write_bytes(b"\x89PNG broken")
    try:
        assert san_main(_argv(golden, out, "--num-gpus", "2", "--dist-url", "auto")) == 1  # one image failed
    finally:
        (golden["dir"] / "zz_broken.png").unlink()
    assert _outputs(out) == reference["files"]
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["processes"] == 2 and summary["written"] == 9 and summary["failed"] == 1
    assert summary["failures"][0]["image"].endswith("zz_broken.png")


@pytest.mark.parametrize("workers", [0, 2])
def test_ctrl_c_while_an_image_is_written_counts_it_and_leaves_no_half_image(
    golden, tmp_path, monkeypatch, capsys, workers, ctrl_c_raises
):
    import san.inference.runner as runner

    real, written = runner.write_outputs, []

    def write_then_ctrl_c(out_dir, stem, *a, **k):  # Ctrl-C lands just as the third image's files are in place
        real(out_dir, stem, *a, **k)
        written.append(stem)
        if len(written) == 3:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(runner, "write_outputs", write_then_ctrl_c)
    out = tmp_path / "out"
    assert san_main(_argv(golden, out, "--workers", str(workers))) == 130
    line = next(x for x in capsys.readouterr().err.splitlines() if "interrupted" in x)
    done = int(line.split("interrupted after ")[1].split(" of 9")[0])
    assert done == len(written) >= 3 and _hidden(out) == []
    assert sorted(p.name for p in out.glob("*.json")) == sorted(f"{s}.json" for s in written)


def test_an_output_folder_removed_mid_run_stops_the_run_with_one_message(golden, tmp_path, monkeypatch, capsys):
    import san.inference.runner as runner

    real, started = runner.write_outputs, []
    out = tmp_path / "out"

    def write(out_dir, stem, *a, **k):
        started.append(stem)
        if len(started) == 3:
            shutil.rmtree(out)  # deleted (or unmounted) under the running command
        real(out_dir, stem, *a, **k)

    monkeypatch.setattr(runner, "write_outputs", write)
    assert san_main(_argv(golden, out, "--workers", "0")) == 1
    err = capsys.readouterr().err
    assert f"the output folder {out} disappeared during the run, after 2 image(s)" in err
    assert len(started) < 9 and "FAILED" not in err and not out.exists()  # stopped at once; nothing recreated


def test_a_missing_input_counts_in_the_summary_as_a_failed_image(golden, reference, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _argv(golden, out)
    gone = str(tmp_path / "gone.png")
    argv.insert(argv.index("--input") + 2, gone)  # --input DIR gone.png
    assert san_main(argv) == 1
    printed, err = capsys.readouterr()
    assert f"{gone}: no such file, folder or matching image" in err
    summary = json.loads((out / SUMMARY).read_text())
    assert (summary["images"], summary["written"], summary["failed"]) == (10, 9, 1)
    assert summary["failures"] == [{"image": gone, "reason": "no such file"}]
    assert "9/10 image(s) segmented" in printed and "1 failed" in printed
    assert _outputs(out) == reference["files"]


def test_every_kind_of_temporary_a_killed_run_leaves_is_removed_and_only_those(golden, tmp_path, caplog):
    """Temporaries of the all-or-none commit (``.NAME.tmpPID``), its backups (``.NAME.oldPID``) and those of
    an encoding's own atomic write (``..NAME.tmpPID.tmpPID``), for each kind of output file; another
    image's temporaries and the user's own hidden files stay."""
    out = tmp_path / "out"
    out.mkdir()
    stale = [
        ".a_labels.png.tmp12",
        ".a_overlay.png.tmp12",
        ".b_legend.png.old77",
        ".b.json.old77",
        ".a_crop.json.tmp3",
        ".b_top.encoding.safetensors.tmp9",
        "..b_top.encoding.safetensors.tmp9.tmp10",
        ".a_left_labels.png.old5",
    ]
    keep = [".notes", ".zz_labels.png.tmp1", ".a_labels.png"]  # not temporaries of this run's images
    for name in stale + keep:
        (out / name).write_bytes(b"x")
    caplog.set_level("INFO", logger="san.inference.runner")
    assert san_main(_argv(golden, out, "--save-encodings", "--workers", "0")) == 0
    assert _hidden(out) == sorted(keep)
    assert f"removed {len(stale)} temporary file(s)" in caplog.text


def test_a_model_failure_in_a_batch_of_two_fails_only_its_image(golden, reference, tmp_path, monkeypatch, capsys):
    """b and b_mirror share a model input size, so --batch-size 2 runs them in one call; when that call
    fails, each image is tried alone: b fails (reported once), b_mirror is written as in the plain run."""
    b = np.asarray(Image.open(golden["dir"] / "b.png"))
    real, calls = SANPredictor.predict_batch, []

    def failing(self, images, *a, **k):
        calls.append(len(images))
        if any(im.shape == b.shape and np.array_equal(im, b) for im in images):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(self, images, *a, **k)

    monkeypatch.setattr(SANPredictor, "predict_batch", failing)
    out = tmp_path / "out"
    assert san_main(_argv(golden, out, "--batch-size", "2", "--workers", "2")) == 1
    assert 2 in calls and calls.count(1) >= 2  # the batch of two, then each of its images alone
    summary = json.loads((out / SUMMARY).read_text())
    reason = "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert summary["failures"] == [{"image": str(golden["dir"] / "b.png"), "reason": reason}]
    assert (summary["written"], summary["failed"]) == (8, 1)
    assert capsys.readouterr().err.count("FAILED") == 1
    want = {k: v for k, v in reference["files"].items() if not (k.startswith("b_") or k.startswith("b."))}
    want.update({k: v for k, v in reference["files"].items() if k.startswith(("b_mirror", "b_crop", "b_top"))})
    assert _outputs(out) == want


def test_an_images_json_is_renamed_into_place_last(tmp_path, monkeypatch):
    """The JSON's presence marks a complete set (resume trusts it), so it is committed after every other
    file of the image, encodings included."""
    import san.inference.outputs as outputs
    from san.inference.result import Prediction

    renamed: list[str] = []
    real = os.replace
    monkeypatch.setattr(outputs.os, "replace", lambda src, dst: renamed.append(Path(dst).name) or real(src, dst))
    pred = Prediction(labels=np.array([[0, 1], [1, 1]], np.int32), class_names=["a", "b"])
    image = np.zeros((2, 2, 3), np.uint8)
    extra = {tmp_path / "x.encoding.safetensors": lambda p: Path(p).write_bytes(b"e")}
    outputs.write_outputs(tmp_path, "x", image, pred, {}, extra=extra)
    assert sorted(renamed) == sorted(
        ["x_labels.png", "x_overlay.png", "x_legend.png", "x.encoding.safetensors", "x.json"]
    )
    assert renamed[-1] == "x.json"


@pytest.mark.parametrize(
    "change", [["--tta"], ["--precision", "bf16"], ["INPUT.MIN_SIZE_TEST", "200"], ["INPUT.MAX_SIZE_TEST", "900"]]
)
def test_resume_redoes_outputs_made_with_other_settings(golden, tmp_path, monkeypatch, change):
    """Every setting an output records must match for --resume to keep it: test-time augmentation,
    precision and the test-time resize each change the labels, so each makes the outputs redone."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(golden["dir"] / "b_top.png", images)
    out = tmp_path / "out"
    local = {**golden, "dir": images}
    assert san_main(_argv(local, out)) == 0
    seen = _spy_batches(monkeypatch)
    assert san_main(_argv(local, out, "--resume")) == 0 and seen == []  # the same settings: kept
    flag = change[0].startswith("--")
    assert san_main(_argv(local, out, "--resume", *(change if flag else [])) + ([] if flag else change)) == 0
    assert len(seen) == 1, change
    summary = json.loads((out / SUMMARY).read_text())
    assert (summary["resumed"], summary["redone"], summary["written"]) == (0, 1, 1)


def test_a_launched_run_that_writes_no_summary_is_a_failure_even_over_an_old_summary(tmp_path, monkeypatch, capsys):
    """A summary left by an earlier run must not stand for this one: it is removed before the processes
    start, so a run whose processes end without writing one exits 2, not with the old run's result."""
    import argparse

    import san.engine.launch as launch

    summary = tmp_path / SUMMARY
    summary.write_text(json.dumps({"failed": 0}))  # the earlier run's: all good
    monkeypatch.setattr(launch, "launch", lambda worker, args, prog: None)  # processes that wrote nothing
    args = argparse.Namespace(num_gpus=2, num_machines=1, machine_rank=0, dist_url="auto")
    assert launch.run_launched(lambda a: 0, args, "san predict", summary, "finished images keep their outputs") == 2
    assert "ended without writing" in capsys.readouterr().err and not summary.exists()


def test_a_failing_batch_is_retried_image_by_image():
    """``batch_or_each``: a batch that fails runs again one item at a time, in order; only the item that
    fails alone gets its exception, and errors other than the model's propagate."""
    from san.inference.runner import batch_or_each

    calls = []

    def run(items):
        calls.append(list(items))
        if "bad" in items:
            raise MemoryError("too big")
        return [f"{x}!" for x in items]

    out = batch_or_each(run, ["a", "bad", "c"])
    assert out[0] == "a!" and out[2] == "c!" and isinstance(out[1], MemoryError)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    assert batch_or_each(run, ["a", "c"]) == ["a!", "c!"]
    with pytest.raises(KeyError):
        batch_or_each(lambda items: {}["x"], ["a", "b"])
