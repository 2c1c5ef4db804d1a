"""``san serve``: the real server in a subprocess on a free localhost port, with the golden v2 model."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("litserve", reason="san serve needs the serve extra (the test extra installs it)")
requests = pytest.importorskip("requests")

from san.serving.client import SANClient, ServeError  # noqa: E402
from san.serving.protocol import ParsedRequest, decode_prediction, encode_prediction  # noqa: E402

KEY = "s3cret-key"
SIZES = ["INPUT.MIN_SIZE_TEST", "250", "INPUT.MAX_SIZE_TEST", "1000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: Path, tmp: Path, *extra: str, key: bool = True) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAN_TEST_KEY": KEY}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, "-m", "san", "serve", "--weights", str(model), "--port", str(port), *extra]
    if key:
        cmd += ["--api-key-env", "SAN_TEST_KEY"]
    log = open(tmp / f"server-{port}.log", "w")
    proc = subprocess.Popen(
        [*cmd, *SIZES], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((tmp / f"server-{port}.log").read_text()[-3000:])
        if SANClient(url).ready():
            return proc, url
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not become ready: " + (tmp / f"server-{port}.log").read_text()[-3000:])


def _leftovers(pgid: int) -> list[int]:
    """Processes still in the server's process group (its workers, should it leave any behind)."""
    r = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def _stop(proc: subprocess.Popen) -> list[int]:
    """SIGTERM to the server alone (as docker stop sends it); returns the processes it left behind, which
    are then killed so that a failing test leaves nothing running."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 15  # multiprocessing's resource tracker leaves a moment after its parent
    while (left := _leftovers(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left or proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return left


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory, golden_v2, golden_v2_model):
    tmp = tmp_path_factory.mktemp("serve")
    golden_v2_model.save_pretrained(tmp / "golden")
    for i, img in enumerate(golden_v2["images"]):
        Image.fromarray(img.permute(1, 2, 0).numpy().astype(np.uint8)).save(tmp / f"photo{i}.png")
    return tmp


@pytest.fixture(scope="module")
def server(golden_dir):
    proc, url = _start(golden_dir / "golden", golden_dir, "--max-batch-size", "8", "--batch-timeout", "0.2")
    yield url
    _stop(proc)


def _post(url: str, *, key: str | None = KEY, **kw) -> requests.Response:
    headers = {"X-API-Key": key} if key else {}
    return requests.post(f"{url}/predict", headers=headers, timeout=120, **kw)


def _metric(url: str, name: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_answers_equal_san_predicts_label_maps(server, golden_dir, golden_v2):
    vocabulary = ", ".join(golden_v2["vocabulary"])
    out = golden_dir / "predicted"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "san",
            "predict",
            "-i",
            str(golden_dir / "photo0.png"),
            str(golden_dir / "photo1.png"),
            "-v",
            vocabulary,
            "--weights",
            str(golden_dir / "golden"),
            "--output",
            str(out),
            "--device",
            "cpu",
            *SIZES,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    client = SANClient(server, api_key=KEY)
    for i in range(2):
        expected = np.asarray(Image.open(out / f"photo{i}_labels.png"))
        remote = client.predict(golden_dir / f"photo{i}.png", vocabulary)
        np.testing.assert_array_equal(remote.labels, expected)
        assert remote.class_names == list(golden_v2["vocabulary"])
        assert i == 1 or len(np.unique(expected)) > 1  # the golden model gives photo 0 several classes
        answer = _post(
            server,
            files={"image": open(golden_dir / f"photo{i}.png", "rb")},
            data={"vocabulary": vocabulary, "label_png": "true"},
        ).json()
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["label_png"]))))
        np.testing.assert_array_equal(png, expected)
        shares = {s["class"]: s["pixel_share"] for s in answer["segments"]}
        assert shares == pytest.approx(remote.pixel_fractions())


def test_concurrent_clients_are_all_answered_in_shared_batches(server, golden_dir):
    data = (golden_dir / "photo1.png").read_bytes()
    before_requests, before_batches = _metric(server, "san_batch_size_sum"), _metric(server, "san_batch_size_count")

    def one(i: int) -> bool:
        names = ["cat", "dog"] if i % 2 else ["grass", "sky", "dog"]  # two vocabularies in flight at once
        r = _post(server, files={"image": ("p.png", data)}, data={"vocabulary": ", ".join(names)})
        return r.status_code == 200 and r.json()["class_names"] == names  # each answered with its own

    start = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        answered = list(pool.map(one, range(32)))
    assert all(answered) and time.monotonic() - start < 240
    images = _metric(server, "san_batch_size_sum") - before_requests
    batches = _metric(server, "san_batch_size_count") - before_batches
    assert images == 32 and batches < 32  # batches larger than one image
    assert _metric(server, "san_requests_in_flight") == 0
    assert _metric(server, 'san_requests_total{status="200"}') >= 32


def test_each_bad_input_gets_its_status_and_the_server_stays_up(server, golden_dir):
    good = (golden_dir / "photo0.png").read_bytes()
    cases = [
        (dict(files={"image": ("t.png", good[:300])}, data={"vocabulary": "cat"}), 400, "truncated or corrupt"),
        (dict(files={"image": ("x.png", b"not an image")}, data={"vocabulary": "cat"}), 400, "not an image file"),
        (dict(files={"image": ("p.png", good)}, data={"vocabulary": " , "}), 400, "the vocabulary is empty"),
        (
            dict(files={"image": ("p.png", good)}, data={"vocabulary": ", ".join(f"c{i}" for i in range(1001))}),
            400,
            "1001 names, above the limit of 1000",
        ),
        (dict(data={"vocabulary": "cat"}), 400, "missing field 'image'"),
        (dict(files={"image": ("p.png", good)}), 400, "missing field 'vocabulary'"),
        (dict(data="hello", headers={"content-type": "text/plain"}), 415, "content type 'text/plain'"),
        (dict(json={"image": "%%%", "vocabulary": "cat"}), 400, "not valid base64"),
        (dict(json={"image": "https://example.com/a.jpg", "vocabulary": "cat"}), 400, "the server fetches nothing"),
    ]
    for kwargs, status, message in cases:
        headers = {"X-API-Key": KEY, **kwargs.pop("headers", {})}
        r = requests.post(f"{server}/predict", headers=headers, timeout=60, **kwargs)
        assert r.status_code == status and message in r.json()["detail"], (status, message, r.status_code, r.text)
        assert r.headers["X-Request-ID"]
    big = np.zeros((8000, 6000, 3), np.uint8)  # 48 MP, above the default limit of 40 MP
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    r = _post(server, files={"image": ("big.png", buf.getvalue())}, data={"vocabulary": "cat"})
    assert r.status_code == 413 and "above the limit" in r.json()["detail"]
    for key, status in ((None, 401), ("wrong", 401)):
        r = _post(server, key=key, files={"image": ("p.png", good)}, data={"vocabulary": "cat"})
        assert r.status_code == status and "API key" in r.json()["detail"]
    b64 = base64.b64encode(good).decode()
    r = _post(server, json={"image": b64, "vocabulary": ["cat", "dog"], "masks": False})
    assert r.status_code == 200 and r.json()["class_names"] == ["cat", "dog"]
    assert all("rle" not in s for s in r.json()["segments"])


def test_the_client_gives_a_prediction_whose_regions_are_the_servers(server, golden_dir):
    pytest.importorskip("supervision")
    client = SANClient(server, api_key=KEY)
    answer = client.predict_json(golden_dir / "photo1.png", "cat, dog, grass, sky")
    pred = decode_prediction(answer)
    det = pred.to_supervision()
    by_class = {s["class"]: s for s in answer["segments"]}
    for name, conf in zip(det.data["class_name"], det.confidence):
        assert conf == pytest.approx(by_class[name]["confidence"], rel=1e-6)
    with pytest.raises(ServeError, match="401: wrong or missing API key"):
        SANClient(server).predict(golden_dir / "photo1.png", "cat")


def test_the_protocol_round_trips_a_prediction_exactly():
    from san.inference.result import Prediction
    from san.inference.vocabulary import build_vocabulary

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (17, 23)).astype(np.int32)
    conf = rng.random((17, 23)).astype(np.float32)
    pred = Prediction(labels, ["a", "b", "c"], confidence=conf, score=conf * 5)
    req = ParsedRequest(np.zeros((17, 23, 3), np.uint8), build_vocabulary("a, b, c"), label_png=True)
    answer = encode_prediction(pred, req)
    back = decode_prediction(answer)
    np.testing.assert_array_equal(back.labels, labels)
    for _, mask, mean_conf, _ in pred._regions():
        assert float(back.confidence[mask].mean()) == pytest.approx(mean_conf, rel=1e-6)
    del answer["label_png"]
    np.testing.assert_array_equal(decode_prediction(answer).labels, labels)  # from the RLE masks alone


def test_shutdown_under_load_answers_or_refuses_each_request_cleanly(golden_dir):
    proc, url = _start(golden_dir / "golden", golden_dir, "--max-batch-size", "4", key=False)
    data = (golden_dir / "photo1.png").read_bytes()

    def one(i: int) -> str:
        try:
            r = requests.post(
                f"{url}/predict", files={"image": ("p.png", data)}, data={"vocabulary": "cat, dog"}, timeout=120
            )
        except requests.ConnectionError:
            return "refused"
        if r.status_code == 200:
            assert r.json()["class_names"] == ["cat", "dog"]
            return "answered"
        return f"status {r.status_code}"

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(16)]
        time.sleep(1.0)
        left = _stop(proc)
        outcomes = [f.result(timeout=180) for f in futures]
    assert set(outcomes) <= {"answered", "refused", "status 503"}, outcomes
    assert "answered" in outcomes
    assert proc.returncode is not None and left == []  # the server and all its workers are gone


def test_refusals_before_any_model_loads(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    try:
        for argv, message in (
            (["--weights", str(tmp_path / "nope"), "--port", "0"], "no such file"),
            (["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
            (["--api-key-env", "SAN_NO_SUCH_VAR"], "SAN_NO_SUCH_VAR: that environment variable is empty"),
            (["--batch-timeout", "5", "--timeout", "1"], "--batch-timeout 5.0 must be below --timeout 1.0"),
            (["--port", "0", "--adapter", str(tmp_path / "none")], "no such adapter"),
            (["--port", "0", "--adapter", str(tmp_path / "junk.safetensors")], "not a readable adapter"),
        ):
            r = subprocess.run(
                [sys.executable, "-m", "san", "serve", *argv], capture_output=True, text=True, timeout=60
            )
            assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        busy.close()
