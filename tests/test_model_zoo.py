"""Official weights by name, offline errors, LFS checksum verification, URL downloads with hashes."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

import san.model_zoo as zoo
from san.model_zoo import MODELS, WeightsError, expected_sha256, get_model_info, resolve_weights


def test_official_names_and_aliases() -> None:
    assert get_model_info("san-vit-b-16") == MODELS["san-vit-b-16"]
    assert get_model_info("san_vit_b_16.pth").config == "san_clip_vit_res4_coco"
    info = get_model_info("SAN_VIT_LARGE_14")
    assert (info.config, info.filename, info.repo_id) == (
        "san_clip_vit_large_res4_coco",
        "san_vit_large_14.pth",
        "Mendel192/san",
    )
    assert info.url == "https://huggingface.co/Mendel192/san/resolve/main/san_vit_large_14.pth"
    assert get_model_info("resnet50") is None


def test_offline_fails_fast_and_says_how_to_pass_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    import san.model_zoo

    calls = []

    def hub(*args, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("Cannot find the requested files in the local cache")
        raise ConnectionError("503 Service Unavailable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    # HF_HUB_OFFLINE: the cache only, no network attempt at all
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set") as e:
        resolve_weights("san-vit-b-16")
    assert calls == [True] and "--weights /path/to/san_vit_b_16.pth" in str(e.value)
    assert MODELS["san-vit-b-16"].url in str(e.value)
    # no network: one quick connection check, then the hint (no retries)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(san.model_zoo, "_reachable", lambda host, port=443, timeout=5.0: False)
    calls.clear()
    with pytest.raises(WeightsError, match="cannot reach huggingface.co .*Set HF_HUB_OFFLINE=1"):
        resolve_weights("san-vit-b-16")
    assert calls == [True]
    # reachable but failing: the Hub's own error, with the hint
    monkeypatch.setattr(san.model_zoo, "_reachable", lambda host, port=443, timeout=5.0: True)
    with pytest.raises(WeightsError, match="ConnectionError: 503.*--weights /path/to/san_vit_b_16.pth"):
        resolve_weights("san-vit-b-16")
    assert calls == [True, True, False]


def _fake_hub_cache(tmp_path: Path, content: bytes, name: str | None = None) -> Path:
    blob = tmp_path / "blobs" / (name or hashlib.sha256(content).hexdigest())
    blob.parent.mkdir(parents=True)
    blob.write_bytes(content)
    link = tmp_path / "snapshots" / "abc" / "san_vit_b_16.pth"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    return link


def test_downloaded_file_checked_against_lfs_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    link = _fake_hub_cache(tmp_path / "good", b"weights")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(link))
    assert resolve_weights("san-vit-b-16") == str(link)
    assert list((tmp_path / "good" / "blobs").glob(".*.san-verified"))  # hashed once, remembered

    bad = _fake_hub_cache(tmp_path / "bad", b"corrupted", name=hashlib.sha256(b"weights").hexdigest())
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(bad))
    with pytest.raises(WeightsError, match="is corrupt: sha256"):
        resolve_weights("san-vit-b-16")


def test_local_files_and_unknown_names(tmp_path: Path) -> None:
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    assert resolve_weights(f) == str(f)
    with pytest.raises(WeightsError, match="directory"):
        resolve_weights(tmp_path)
    with pytest.raises(WeightsError, match="san-vit-b-16, san-vit-l-14"):
        resolve_weights("san-vit-h-14")


@pytest.fixture
def http_root(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_url_download_with_hash_checks(http_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = http_root
    content = os.urandom(1000)
    digest = hashlib.sha256(content).hexdigest()
    (root / f"tiny-{digest[:8]}.pth").write_bytes(content)
    (root / "plain.pth").write_bytes(content)
    cache = str(tmp_path / "cache")
    got = resolve_weights(f"{base}/tiny-{digest[:8]}.pth", cache_dir=cache)
    assert Path(got).read_bytes() == content and Path(got).parent.parent == Path(cache)
    assert Path(resolve_weights(f"{base}/plain.pth#sha256={digest}", cache_dir=cache)).read_bytes() == content
    with pytest.raises(WeightsError, match="does not match"):
        resolve_weights(f"{base}/plain.pth#sha256={'0' * 64}", cache_dir=str(tmp_path / "c2"))
    assert not list((tmp_path / "c2").rglob("plain.pth"))  # a bad download is removed
    with pytest.raises(WeightsError, match="--weights /path/to/missing.pth"):
        resolve_weights(f"{base}/missing.pth", cache_dir=cache)
    monkeypatch.setattr(zoo, "sha256sum", lambda p: digest)  # cached copy reused without a download
    (root / f"tiny-{digest[:8]}.pth").unlink()
    assert resolve_weights(f"{base}/tiny-{digest[:8]}.pth", cache_dir=cache) == got


def test_same_file_name_at_two_urls_gets_two_cache_entries(http_root, tmp_path: Path) -> None:
    root, base = http_root
    for sub, data in (("a", b"weights of a"), ("b", b"weights of b")):
        (root / sub).mkdir()
        (root / sub / "model.pth").write_bytes(data)
    cache = str(tmp_path / "cache")
    a = resolve_weights(f"{base}/a/model.pth", cache_dir=cache)
    b = resolve_weights(f"{base}/b/model.pth", cache_dir=cache)
    assert a != b and Path(a).name == Path(b).name == "model.pth"
    assert (Path(a).read_bytes(), Path(b).read_bytes()) == (b"weights of a", b"weights of b")
    (root / "a" / "model.pth").unlink()  # the cached copy of the first URL is still served
    assert Path(resolve_weights(f"{base}/a/model.pth", cache_dir=cache)).read_bytes() == b"weights of a"


def test_file_name_hash_rule(http_root, tmp_path: Path) -> None:
    root, base = http_root
    (root / "checkpoint-120000.pth").write_bytes(b"step 120000")  # digits after a dash: a step, not a hash
    got = resolve_weights(f"{base}/checkpoint-120000.pth", cache_dir=str(tmp_path / "c"))
    assert Path(got).read_bytes() == b"step 120000"
    (root / "model-deadbeef.pth").write_bytes(b"not matching deadbeef")
    with pytest.raises(WeightsError, match="does not match the expected deadbeef"):
        resolve_weights(f"{base}/model-deadbeef.pth", cache_dir=str(tmp_path / "c"))
    assert expected_sha256("http://h/x/model-20240101.pth") is None  # 8 digits, no letter: a date
    assert expected_sha256("http://h/x/model-abc12.pth") is None  # too short
    assert expected_sha256("http://h/x/model-0123456789ABCDEF.pth") == "0123456789abcdef"
    assert expected_sha256("http://h/x-deadbeef0/model.pth") is None  # only the file name counts
    assert expected_sha256("http://h/m-20240101.pth#sha256=12345678") == "12345678"  # asked for: checked
    with pytest.raises(WeightsError, match="hex digits"):
        expected_sha256("http://h/m.pth#sha256=xyz")


@pytest.mark.parametrize(
    "argv, command",
    [
        (["/usr/local/bin/san", "export", "hub", "--weights", "x"], "san export hub"),
        (["/site/san/__main__.py", "predict", "-i", "a.jpg"], "san predict"),
        (["/site/san/apps/prepare_data.py", "coco_stuff"], "san prepare-data"),
        (["/site/pytest/__main__.py", "tests"], None),  # another tool run with python -m
        (["/usr/local/bin/san", "--version"], None),
        (["-c"], None),
    ],
)
def test_the_offline_hint_names_only_a_san_command(monkeypatch, argv, command):
    monkeypatch.setattr(zoo.sys, "argv", argv)
    hint = zoo._offline_hint("w.pth", "https://example.org/w.pth")
    shown = f"`{command} --weights /path/to/w.pth ...`" if command else "`--weights /path/to/w.pth`"
    assert shown in hint and "weights='/path/to/w.pth'" in hint


def test_local_weights_missing_means_a_missing_file_only(tmp_path):
    (tmp_path / "here.pth").write_bytes(b"x")
    assert zoo.local_weights_missing(tmp_path / "gone.pth")
    assert not zoo.local_weights_missing(tmp_path / "here.pth")
    assert not zoo.local_weights_missing("san-vit-b-16")  # an official name: downloaded or cached
    assert not zoo.local_weights_missing("https://example.org/w.pth")  # a URL: fetched when used
