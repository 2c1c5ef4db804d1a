"""The Hugging Face Hub format: save_pretrained / from_pretrained give the same weights and outputs; the
folder stands on its own (its CLIP config travels with it); the model card's front matter reads back
through huggingface_hub's own parser; push_to_hub uploads that folder; ``san export hub`` and the
trainer write it; folders that are not the format are refused with what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import san
from san import hub
from san.apps.export import main as export_main
from san.build import build_san, san_kwargs
from san.inference.predictor import SANPredictor
from san.model_source import locate_model

from .conftest import tiny_cfg

RESULTS = {
    "ade20k_sem_seg_val": {"sem_seg": {"mIoU": 27.456, "fwIoU": 50.0}},
    "voc_sem_seg_val": {"sem_seg": {"mIoU": 94.04}},
}


@pytest.fixture
def trained(tmp_path) -> san.SAN:
    """A tiny model whose every weight differs from a fresh build's (so a load that drops one shows)."""
    (tmp_path / "cfg").mkdir()
    cfg = tiny_cfg(tmp_path / "cfg")
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("coco_2017_train_stuff_sem_seg",), ("pcontext_sem_seg_val", "x_val")
    torch.manual_seed(0)
    model = san.build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    image = torch.rand(3, 96, 128) * 255
    with torch.no_grad():
        return model([{"image": image, "vocabulary": ["cat", "dog", "sky"]}])[0]["sem_seg"]


def test_a_saved_folder_loads_the_same_model_on_its_own(trained, tmp_path):
    folder = tmp_path / "model"
    trained.save_pretrained(folder)
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.yaml", "README.md", "clip_config.json"}
    shutil.rmtree(tmp_path / "cfg")  # the CLIP config the model was built from is gone: the folder has its own
    moved = tmp_path / "elsewhere" / "model"
    shutil.move(folder, moved)

    loaded = san.SAN.from_pretrained(moved)
    assert isinstance(loaded, san.SAN) and not loaded.training
    want, got = trained.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert torch.equal(_outputs(trained), _outputs(loaded))
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    assert cfg["MODEL"]["SAN"]["CLIP_MODEL_NAME"] == "clip_config.json"
    assert cfg["MODEL"]["SAN"]["NUM_CLASSES"] == 5 and cfg["MODEL"]["SIDE_ADAPTER"]["NUM_QUERIES"] == 10

    assert locate_model(moved).kind == "hub"
    photo = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    by_folder = SANPredictor.from_pretrained(str(moved), device="cpu").predict(photo, "cat, dog, sky")
    by_model = SANPredictor(trained, device="cpu").predict(photo, "cat, dog, sky")
    assert np.array_equal(by_folder.labels, by_model.labels)


def test_the_model_card_reads_back_through_huggingface_hub(trained, tmp_path):
    from huggingface_hub import ModelCard

    trained.save_pretrained(tmp_path / "m", results=RESULTS)
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.library_name == "san" and card.data.pipeline_tag == "image-segmentation"
    assert card.data.license == "mit" and "open-vocabulary" in card.data.tags
    assert {"COCO-Stuff", "ADE20K-150", "Pascal VOC"} <= set(card.data.datasets)
    got = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert got == {("ADE20K-150", "mIoU"): 27.46, ("Pascal VOC", "mIoU"): 94.04}
    assert "| ADE20K-150 | 27.46 |" in card.text and 'from_pretrained("THIS_REPO_OR_FOLDER")' in card.text

    assert {"COCO-Stuff", "ADE20K-150", "Pascal VOC"} == set(card.data.datasets)  # trained on + evaluated on

    trained.save_pretrained(tmp_path / "plain")  # never evaluated: no model-index, no benchmark named
    plain = ModelCard.load(tmp_path / "plain" / "README.md")
    assert plain.data.eval_results is None
    assert plain.data.datasets == ["COCO-Stuff"]  # what it was trained on; DATASETS.TEST was not run
    vision = json.loads((tmp_path / "plain" / "clip_config.json").read_text())["vision_cfg"]
    shape = f"a custom CLIP ViT (width {vision['width']}, layers {vision['layers']}, patch {vision['patch_size']}"
    assert shape in plain.text and "CLIP clip_config.json" not in plain.text


def test_push_to_hub_uploads_the_folder(trained, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    seen: dict = {}

    def create_repo(self, repo_id, **kw):
        seen["repo"] = repo_id
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kw):
        seen["files"] = {p.name: p.stat().st_size for p in Path(folder_path).iterdir()}
        seen["loaded"] = san.SAN.from_pretrained(folder_path).state_dict()
        seen["card"] = (Path(folder_path) / "README.md").read_text()
        return "commit-url"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert trained.push_to_hub("someone/san-tiny", results=RESULTS) == "commit-url"
    assert seen["repo"] == "someone/san-tiny"
    assert {"model.safetensors", "config.yaml", "README.md", "clip_config.json"} == set(seen["files"])
    assert all(torch.equal(v, seen["loaded"][k]) for k, v in trained.state_dict().items())
    assert "| Pascal VOC | 94.04 |" in seen["card"]


def test_folders_that_are_not_the_format_are_refused(trained, tmp_path, monkeypatch):
    trained.save_pretrained(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    with pytest.raises(hub.HubFormatError, match="has no model.safetensors"):
        san.SAN.from_pretrained(tmp_path / "empty")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(trained.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(hub.HubFormatError, match="pickled weights.*san export hub --weights"):
        san.SAN.from_pretrained(pickled)

    no_config = tmp_path / "no_config"
    shutil.copytree(tmp_path / "good", no_config)
    (no_config / "config.yaml").unlink()
    with pytest.raises(hub.HubFormatError, match="has no config.yaml"):
        san.SAN.from_pretrained(no_config)

    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "good", bad)
    (bad / "config.yaml").write_text("MODEL:\n  SAN:\n    NUM_CLASSES: [1, 2\n")
    with pytest.raises(hub.HubFormatError, match="config.yaml"):
        san.SAN.from_pretrained(bad)

    other = tmp_path / "other"  # a config of another architecture: the weights do not fit it
    shutil.copytree(tmp_path / "good", other)
    text = (other / "config.yaml").read_text().replace("NUM_QUERIES: 10", "NUM_QUERIES: 12")
    (other / "config.yaml").write_text(text)
    with pytest.raises(Exception, match="query_embed|shape"):
        san.SAN.from_pretrained(other)

    with pytest.raises(hub.HubFormatError, match="is a file"):
        san.SAN.from_pretrained(tmp_path / "good" / "config.yaml")
    with pytest.raises(TypeError, match="unknown download option"):
        san.SAN.from_pretrained(tmp_path / "good", revison="main")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubFormatError, match="neither a local folder nor a Hub repository"):
        san.SAN.from_pretrained("nobody-here/no-such-san-model")

    by_hand = build_san(**san_kwargs(tiny_cfg(tmp_path)))
    with pytest.raises(hub.HubFormatError, match="built by hand"):
        by_hand.save_pretrained(tmp_path / "by_hand")


def test_a_detectron2_config_keeps_only_the_keys_san_knows():
    text = "MODEL:\n  META_ARCHITECTURE: SAN\n  RETINANET:\n    NUM_CLASSES: 3\n  SAN:\n    NUM_CLASSES: 171\n"
    cfg = hub.read_config_text(text)
    assert cfg.MODEL.SAN.NUM_CLASSES == 171 and "RETINANET" not in cfg.MODEL
    with pytest.raises(hub.HubFormatError, match="not valid YAML"):
        hub.read_config_text("MODEL: [")


def test_export_hub_converts_a_checkpoint_and_never_clobbers(trained, tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    san.save_checkpoint(trained, tmp_path / "tiny.pth")
    out = tmp_path / "exported"
    args = ["hub", "--weights", str(tmp_path / "tiny.pth"), "--config-file", str(tmp_path / "tiny.yaml"), "-o"]
    assert export_main([*args, str(out)]) == 0
    loaded = san.SAN.from_pretrained(out)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in trained.state_dict().items())

    before = (out / "model.safetensors").read_bytes()
    assert export_main([*args, str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before

    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    broken = [*args[:2], str(tmp_path / "broken.pth"), *args[3:], str(out), "--force"]
    assert export_main(broken) == 2
    assert (out / "model.safetensors").read_bytes() == before  # a failed export leaves the old folder
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".exported")) == []

    assert export_main([*args, str(out), "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_the_card_names_an_official_clip_by_its_name_and_weights():
    from san.hub import model_card

    card = model_card(san.get_cfg())
    assert "with CLIP ViT-B/16 (openai weights), trained on" in card
