"""The web demo in a real headless browser: upload a photo, type class names, read the result back.

Needs gradio and selenium (the ``dev`` extra) and Debian's chromium + chromium-driver (installed
here with apt-get when missing and possible; CI installs them in ``.ci/run``).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import san
from san.inference.predictor import SANPredictor
from san.inference.visualize import overlay

from ..conftest import tiny_cfg, tiny_files
from .colour_model import use_colour_model

gr = pytest.importorskip("gradio", reason="the demo needs gradio (pip install -e '.[dev]')")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="the browser test needs selenium (pip install -e '.[dev]')"
)

# an empty entry and a duplicate, both reported on the page; two classes, so that with the expansion
# the colour model's third query would win a distractor ("other") and without it the first class
VOCABULARY = "astronaut, , flag, Astronaut"


def _browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing Debian's packages if missing and possible."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
            env=env,
            capture_output=True,
            timeout=600,
        )
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        pytest.skip("chromium and chromium-driver are not installed and apt-get could not install them")
    return found  # type: ignore[return-value]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch_image(src: str) -> np.ndarray:
    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        with urllib.request.urlopen(src, timeout=30) as r:
            data = r.read()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class _Counted:
    """A predictor whose image-path calls are counted (the demo must not re-encode for a new vocabulary)."""

    def __init__(self, predictor: SANPredictor) -> None:
        self.predictor, self.encodes, self.built = predictor, 0, 0

    def factory(self, name: str) -> SANPredictor:
        if name == "offline-model":  # never reached: the demo refuses it before building
            raise AssertionError("an unavailable model was built")
        self.built += 1
        return self.predictor

    def encode(self, image):
        self.encodes += 1
        return SANPredictor.encode(self.predictor, image)


@pytest.fixture
def demo_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from san.apps.demo import build_demo

    use_colour_model(monkeypatch)  # labels that follow the photo, so the legend names several classes
    torch.manual_seed(0)
    predictor = SANPredictor(san.build_model(tiny_cfg(tmp_path)), device="cpu", min_size=256, max_size=512)
    counted = _Counted(predictor)
    monkeypatch.setattr(predictor, "encode", counted.encode)
    port = _free_port()
    demo = build_demo(counted.factory, ["tiny-random", "offline-model"], available=lambda n: n != "offline-model")
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", predictor, counted
    finally:
        demo.close()


def test_demo_in_headless_chromium(demo_url, tmp_path: Path) -> None:
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    skimage_data = pytest.importorskip("skimage.data")
    chromium, driver_path = _browser()
    url, predictor, counted = demo_url
    photo = skimage_data.astronaut()  # [512, 512, 3] uint8
    photo_path = tmp_path / "astronaut.png"
    Image.fromarray(photo).save(photo_path)

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(url)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#input_image input[type=file]")))
        upload.send_keys(str(photo_path))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#input_image img")))
        box = driver.find_element(By.CSS_SELECTOR, "#vocabulary textarea")
        box.clear()
        box.send_keys(VOCABULARY)
        expansion = driver.find_element(By.CSS_SELECTOR, "#other input")
        expansion.click()
        expansion.send_keys(Keys.CONTROL, "a")
        expansion.send_keys("none", Keys.ENTER)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#other input").get_attribute("value") == "none")
        driver.find_element(By.CSS_SELECTOR, "#submit").click()
        img = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#output_image img")))
        t0 = time.time()
        while not img.get_attribute("src") and time.time() - t0 < 30:
            time.sleep(0.2)
        img_src = img.get_attribute("src")
        result = _fetch_image(img_src)
        legend_src = driver.find_element(By.CSS_SELECTOR, "#legend img").get_attribute("src")
        wait.until(lambda d: "%" in d.find_element(By.CSS_SELECTOR, "#fractions").text)
        shares_text = driver.find_element(By.CSS_SELECTOR, "#fractions").text
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value"))
        status = driver.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value")
        # only the names change: the same image is re-labelled without being encoded again
        box.clear()
        box.send_keys("flag, astronaut, sky")  # three classes: the third query now wins its own
        driver.find_element(By.CSS_SELECTOR, "#submit").click()
        wait.until(
            lambda d: "encoding reused" in d.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value")
        )
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#output_image img").get_attribute("src") != img_src)
        relabelled = _fetch_image(driver.find_element(By.CSS_SELECTOR, "#output_image img").get_attribute("src"))
        # a file that is not an image: san's own message on the page
        junk = tmp_path / "notes.png"
        junk.write_text("this is not an image")
        driver.find_element(By.CSS_SELECTOR, "#input_image button[aria-label='Clear']").click() if driver.find_elements(
            By.CSS_SELECTOR, "#input_image button[aria-label='Clear']"
        ) else None
        driver.find_element(By.CSS_SELECTOR, "#input_image input[type=file]").send_keys(str(junk))
        time.sleep(1.0)
        driver.find_element(By.CSS_SELECTOR, "#submit").click()
        wait.until(lambda d: "not an image file" in d.page_source)
    finally:
        driver.quit()

    # the page shows exactly the overlay the predictor makes for this photo and the typed names, unexpanded
    pred = predictor.predict(photo, VOCABULARY, other="none")
    assert pred.class_names == ["astronaut", "flag"]
    assert len(pred.pixel_fractions()) == 2  # both typed classes win pixels
    assert "other" in predictor.predict(photo, VOCABULARY, other="coco-all").pixel_fractions()
    assert result.shape == photo.shape
    np.testing.assert_array_equal(result, overlay(photo, pred.labels, pred.class_names))
    assert np.abs(result.astype(int) - photo.astype(int)).mean() > 5  # colours really were blended in
    shown = {line.strip() for line in shares_text.splitlines()} & {*pred.class_names, "other", "person", "sky"}
    assert shown == set(pred.pixel_fractions()), shares_text  # the typed names reached the server, no "other"
    legend = _fetch_image(legend_src)
    assert legend.shape[1] > 20 and (legend < 250).any()  # a legend with swatches and text
    assert "duplicate" in status and "'Astronaut'" in status and "ignored 1 empty entry" in status, status
    assert status.startswith("image encoded in ") and " s; labelled with " in status  # each step timed
    assert counted.encodes == 1  # two vocabularies, one encoding of the image
    again = predictor.predict(photo, "flag, astronaut, sky", other="none")
    np.testing.assert_array_equal(relabelled, overlay(photo, again.labels, again.class_names))


def _api(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def test_bad_uploads_get_sans_message_in_the_api_and_the_server_stays_up(
    demo_url, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """Each refusal is the Messages box's text (it stays there), naming the upload by its own name, not
    the server's temporary path; no result images; no traceback in the server's log."""
    from gradio_client import handle_file

    url, predictor, counted = demo_url
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(good)
    (tmp_path / "text.png").write_text("this is not an image")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("1", (20000, 20000)).save(tmp_path / "huge.png")  # 400 megapixels, a small file
    client = _api(url)
    expected = {
        "text.png": "not an image file",
        "cut.png": "truncated or corrupt",
        "empty.png": "empty file (0 bytes)",
        "huge.png": "400.0 megapixels, above the limit of 100.0 megapixels",
    }
    for name, message in expected.items():
        result = client.predict(handle_file(str(tmp_path / name)), "a, b", "none", "tiny-random", api_name="/segment")
        status = result[-1]
        assert status.startswith(f"Cannot use the upload {name}: {name}: ") and message in status, (name, status)
        assert "gradio" not in status and str(tmp_path) not in status and result[0] is None, status
    result = client.predict(handle_file(str(good)), ", ,", "none", "tiny-random", api_name="/segment")
    assert result[-1].startswith("Type one or more class names") and "--" not in result[-1], result[-1]
    result = client.predict(handle_file(str(good)), "a, b", "none", "tiny-random", api_name="/segment")
    assert "labelled with 2 class(es)" in result[-1]  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_an_offline_model_is_refused_at_once_and_the_loaded_one_kept(demo_url, tmp_path: Path) -> None:
    from gradio_client import handle_file

    from san.apps.demo import model_choices

    url, predictor, counted = demo_url
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(good)
    client = _api(url)
    client.predict(handle_file(str(good)), "a", "none", "tiny-random", api_name="/segment")
    refused = client.predict(handle_file(str(good)), "a", "none", "offline-model", api_name="/segment")
    assert refused[-1].startswith("offline-model is not downloaded and this machine is offline; the loaded model")
    result = client.predict(handle_file(str(good)), "a, b", "none", "tiny-random", api_name="/segment")
    assert counted.built == 1 and "image encoding reused" in result[-1]  # the loaded model (and its work) kept
    labels = model_choices(["tiny-random", "offline-model"], lambda n: n != "offline-model")
    assert labels == [("tiny-random", "tiny-random"), ("offline-model (not downloaded; offline)", "offline-model")]


def test_the_demo_command_says_where_it_runs_and_how_to_share(tmp_path: Path) -> None:
    """``san demo`` prints its own start lines: the address, and ``san demo --share`` (not gradio's
    advice to edit a ``launch()`` call the user never wrote)."""
    import sys

    tiny_files(tmp_path)
    port = _free_port()
    cmd = [sys.executable, "-m", "san", "demo", "--weights", str(tmp_path / "tiny.pth")]
    cmd += ["--config-file", str(tmp_path / "tiny.yaml"), "--port", str(port)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if "--share" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = "\n".join(lines)
    assert f"san demo: running at http://127.0.0.1:{port}/ (Ctrl-C stops it)" in text, text
    assert "`san demo --share` also makes a public gradio.live link" in text and "share=True" not in text, text


def test_demo_command_builds_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from san.apps import demo as demo_app

    tiny_files(tmp_path)
    seen = {}

    def fake_build(factory, names, **kw):
        seen["names"], seen["predictor"] = names, factory(names[0])
        app = {"launch": lambda self, **kw: seen.update(kw), "block_thread": lambda self: None, "local_url": "x"}
        return type("App", (), app)()

    monkeypatch.setattr(demo_app, "build_demo", fake_build)
    argv = ["--weights", str(tmp_path / "tiny.pth"), "--config-file", str(tmp_path / "tiny.yaml"), "--port", "7999"]
    assert demo_app.main([*argv, "INPUT.MIN_SIZE_TEST", "96"]) == 0
    assert seen["names"] == ["custom: tiny.pth", "san-vit-b-16", "san-vit-l-14"]
    assert seen["predictor"].min_size == 96 and (seen["server_port"], seen["server_name"]) == (7999, "127.0.0.1")
