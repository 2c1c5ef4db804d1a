"""The official SAN checkpoints by name, and weights from a local file or a URL.

``resolve_weights("san-vit-b-16")`` downloads ``san_vit_b_16.pth`` from the Hugging Face repository
``Mendel192/san`` on first use (huggingface_hub: cached under ``~/.cache/huggingface``, interrupted
downloads resume) and returns the local path. Checksums: the Hub stores these files with Git LFS,
whose object id is the file's sha256 and becomes the name of the cached blob; after a download the
file is hashed once and compared with that name (a marker records the success, so later runs skip
the hash). An ``http(s)://`` URL is fetched with ``torch.hub.download_url_to_file`` into
``~/.cache/san/weights/<first 16 hex digits of the URL's sha256>/<file name>``, so two URLs with the
same file name never share a cache entry. Checked: a ``#sha256=<hex>`` fragment (a full hash or a
prefix), else a hash prefix in the file name in torch.hub's convention ``name-<hex>.ext``, which
counts as a hash only with 8 to 64 hex digits of which at least one is a letter a-f (so
``checkpoint-120000.pth`` or ``model-20240101.pth`` are plain names, not hashes; a prefix of digits
only is not checked: give ``#sha256=`` to check it). Anything else must be an existing file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = [
    "MODELS",
    "ModelInfo",
    "WeightsError",
    "expected_sha256",
    "get_model_info",
    "is_available",
    "resolve_weights",
    "sha256sum",
]

HF_REPO = "Mendel192/san"
_WEIGHT_SUFFIXES = (".pth", ".pt", ".pkl", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class ModelInfo:
    """An official checkpoint: its config (bundled) and its file in the Hugging Face repository."""

    name: str
    config: str
    filename: str
    repo_id: str = HF_REPO
    description: str = ""

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"


MODELS: dict[str, ModelInfo] = {
    "san-vit-b-16": ModelInfo(
        "san-vit-b-16", "san_clip_vit_res4_coco", "san_vit_b_16.pth", description="SAN with CLIP ViT-B/16 (COCO-Stuff)"
    ),
    "san-vit-l-14": ModelInfo(
        "san-vit-l-14",
        "san_clip_vit_large_res4_coco",
        "san_vit_large_14.pth",
        description="SAN with CLIP ViT-L/14@336 (COCO-Stuff)",
    ),
}
_ALIASES = {"san_vit_b_16": "san-vit-b-16", "san_vit_large_14": "san-vit-l-14", "san-vit-large-14": "san-vit-l-14"}


class WeightsError(RuntimeError):
    """Weights cannot be found, downloaded or verified; the message says how to pass a local file."""


def get_model_info(name: str) -> ModelInfo | None:
    """The official model called ``name`` (``san-vit-b-16``, ``san-vit-l-14`` or the file stems), else None."""
    key = name.lower().removesuffix(".pth")
    return MODELS.get(_ALIASES.get(key, key))


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _command_run() -> str | None:
    """The ``san`` command this process runs (``san export hub``), read from ``sys.argv``; None in Python."""
    argv = sys.argv
    if not argv:
        return None
    prog = Path(argv[0])
    if prog.parent.name == "apps" and prog.parent.parent.name == "san":  # python -m san.apps.predict
        argv = ["san", prog.stem.replace("_", "-"), *argv[1:]]
    elif not (prog.name in ("san", "san.exe") or (prog.name == "__main__.py" and prog.parent.name == "san")):
        return None  # Python, or another tool's python -m
    if len(argv) < 2 or argv[1].startswith("-"):
        return None
    words = ["san", argv[1]]
    if argv[1] == "export" and len(argv) > 2 and not argv[2].startswith("-"):
        words.append(argv[2])
    return " ".join(words)


def _offline_hint(filename: str, url: str) -> str:
    command = _command_run()
    shell = f"`{command} --weights /path/to/{filename} ...` " if command else f"`--weights /path/to/{filename}` "
    return (
        f"Download {url} elsewhere and pass the local file: {shell}"
        f"(Python: SANPredictor.from_pretrained(..., weights='/path/to/{filename}'))."
    )


def _verify_lfs_blob(path: str, info: ModelInfo) -> None:
    """Compare the downloaded file with the sha256 the Hub named its cache blob after."""
    blob = os.path.realpath(path)
    expected = os.path.basename(blob)
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        logger.info("%s: cache entry is not named by a sha256; relying on huggingface_hub's checks", path)
        return
    stat = os.stat(blob)
    marker = os.path.join(os.path.dirname(blob), f".{expected}.san-verified")
    stamp = f"{stat.st_size} {stat.st_mtime_ns}"
    if os.path.isfile(marker):
        with open(marker) as f:
            if f.read() == stamp:
                return
    logger.info("verifying the sha256 of %s (once)", info.filename)
    actual = sha256sum(blob)
    if actual != expected:
        raise WeightsError(
            f"{info.filename} in the Hugging Face cache is corrupt: sha256 {actual} but the Hub says {expected}. "
            f"Delete {blob} and run again to re-download. " + _offline_hint(info.filename, info.url)
        )
    try:
        with open(marker, "w") as f:
            f.write(stamp)
    except OSError:  # a read-only cache is fine: we just hash again next time
        pass


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` (a name that does not resolve fails at once)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_hub_file(info: ModelInfo, cache_dir: str | None) -> str | None:
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(info.repo_id, info.filename, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # not cached, or huggingface_hub missing (it raises several types)
        return None


def _hub_host() -> str:
    return urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def is_available(name: str, cache_dir: str | None = None) -> bool:
    """Whether the official model ``name`` can be had now: in the local cache, or the Hub reachable
    (and ``HF_HUB_OFFLINE`` unset). Takes at most a few seconds (one connection attempt)."""
    info = get_model_info(name)
    if info is None:
        return False
    if _cached_hub_file(info, cache_dir) is not None:
        return True
    return not _hub_offline() and _reachable(_hub_host())


def _download_hub(info: ModelInfo, cache_dir: str | None) -> str:
    """The cached file, else a download; fails at once when the Hub cannot be reached."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsError(
            "huggingface_hub is needed to download official weights (pip install huggingface_hub). "
            + _offline_hint(info.filename, info.url)
        ) from None
    path = _cached_hub_file(info, cache_dir)  # a cached file needs no network (the official files never change)
    if path is None:
        if _hub_offline():
            raise WeightsError(
                f"{info.filename} is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be "
                "downloaded. " + _offline_hint(info.filename, info.url)
            )
        host = (
            urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
        )
        if not _reachable(host):
            raise WeightsError(
                f"cannot reach {host} to download {info.filename} (offline?). Set HF_HUB_OFFLINE=1 to use only "
                "the local cache without trying the network. " + _offline_hint(info.filename, info.url)
            )
        try:
            path = hf_hub_download(info.repo_id, info.filename, cache_dir=cache_dir)
        except Exception as e:  # DNS, HTTP errors, gated repo, disk full ...
            raise WeightsError(
                f"could not download {info.filename} from huggingface.co/{info.repo_id} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                + _offline_hint(info.filename, info.url)
            ) from e
    _verify_lfs_blob(path, info)
    return path


def expected_sha256(url: str) -> str | None:
    """The sha256 (prefix) a URL promises: its ``#sha256=`` fragment, else a ``-<hex>.`` file-name
    suffix of 8-64 hex digits with at least one letter a-f; None when it promises none."""
    parsed = urllib.parse.urlparse(url)
    if parsed.fragment.startswith("sha256="):
        digest = parsed.fragment[len("sha256=") :].lower()
        if not re.fullmatch(r"[0-9a-f]{1,64}", digest):
            raise WeightsError(f"{url}: '#sha256=' must be followed by hex digits, got {digest!r}")
        return digest
    m = re.search(r"-([0-9a-fA-F]{8,64})\.[^/.]+$", os.path.basename(parsed.path))
    if m and re.search(r"[a-fA-F]", m.group(1)):
        return m.group(1).lower()
    return None


def _download_url(url: str, cache_dir: str | None) -> str:
    import torch.hub

    parsed = urllib.parse.urlparse(url)
    filename = os.path.basename(parsed.path) or "weights.pth"
    expected = expected_sha256(url)
    bare = urllib.parse.urlunparse(parsed._replace(fragment=""))
    cache_dir = cache_dir or os.path.join(os.path.expanduser(os.getenv("SAN_CACHE", "~/.cache/san")), "weights")
    cache_dir = os.path.join(cache_dir, hashlib.sha256(bare.encode()).hexdigest()[:16])  # one folder per URL
    os.makedirs(cache_dir, exist_ok=True)
    dst = os.path.join(cache_dir, filename)
    if os.path.isfile(dst) and (expected is None or sha256sum(dst).startswith(expected)):
        return dst
    try:
        torch.hub.download_url_to_file(bare, dst, progress=True)
    except Exception as e:
        raise WeightsError(
            f"could not download {url} ({type(e).__name__}: {e}). " + _offline_hint(filename, url)
        ) from e
    if expected is not None:
        actual = sha256sum(dst)
        if not actual.startswith(expected):
            os.remove(dst)
            raise WeightsError(f"{url}: sha256 {actual} does not match the expected {expected}; the file was removed")
    return dst


_URL_PREFIXES = ("http://", "https://")


def local_weights_missing(weights: str | os.PathLike) -> bool:
    """Whether ``weights`` names a local file that does not exist (not an official name, not an
    http(s) URL): a check that needs neither the network nor torch."""
    weights = os.fspath(weights)
    return not weights.startswith(_URL_PREFIXES) and get_model_info(weights) is None and not os.path.exists(weights)


def resolve_weights(weights: str | os.PathLike, cache_dir: str | None = None) -> str:
    """Local path of ``weights``: an official name (downloaded once), an http(s) URL, or a file."""
    weights = os.fspath(weights)
    if weights.startswith(_URL_PREFIXES):
        return _download_url(weights, cache_dir)
    if os.path.isfile(weights):
        return weights
    info = get_model_info(weights)
    if info is not None:
        return _download_hub(info, cache_dir)
    if os.path.isdir(weights):
        raise WeightsError(f"--weights {weights} is a directory; give the checkpoint file inside it")
    if os.sep in weights or weights.endswith(_WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"checkpoint not found: {weights}")
    raise WeightsError(
        f"weights {weights!r} are neither an existing file, an http(s) URL, nor an official model ({', '.join(MODELS)})"
    )
