"""`stylemix publish`: the folder it uploads, its model card, and the huggingface_hub calls it makes
(offline here: the upload itself never reaches a real hub in these tests)."""
import json
import subprocess

import pytest
from huggingface_hub import ModelCard

from stylemix.commands.publishing import build, card, upload
from stylemix.errors import StyleMixError
from tests.e2e import ENV
from tests.readme import commands
from tests.ui_workspace import COMBO, make_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = make_workspace(tmp_path_factory.mktemp("publish"))
    (root / "reports").mkdir()
    (root / "reports/metrics.json").write_text(json.dumps({"scorer": {"clip_model": "ViT-L-14"}, "models": {
        "openmoji": {"clip_score": {"mean": 0.31, "ci_low": 0.29, "ci_high": 0.33}, "style_gain_over_base": 0.05}}}))
    (root / "reports/validation.json").write_text(json.dumps({"loss": {"base": {"openmoji": 0.2}, "openmoji": {"openmoji": 0.15}}}))
    return root


def test_the_folder_holds_both_layouts_samples_and_a_card_the_hub_reads(workspace, monkeypatch, tmp_path):
    monkeypatch.chdir(workspace)
    images = workspace / "reports/images/openmoji"
    images.mkdir(parents=True)
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    for i in range(6):
        meta = PngInfo()
        meta.add_text("prompt", f"omstyle, prompt {i}")
        Image.new("RGB", (8, 8)).save(images / f"p{i}_s0.png", pnginfo=meta)
    out = build("openmoji", workspace / "models/lora/openmoji", tmp_path / "hub")
    assert {p.name for p in out.iterdir()} == {"README.md", "pytorch_lora_weights.safetensors", "openmoji_kohya.safetensors", "samples"}
    assert len(list((out / "samples").iterdir())) == 4
    c = ModelCard.load(out / "README.md")  # huggingface_hub's own parser and ModelCardData
    assert c.data.instance_prompt == "omstyle" and "lora" in c.data.tags and c.data.base_model is None  # tiny is not on the hub
    assert c.data.widget[0] == {"text": "omstyle, prompt 0", "output": {"url": "samples/p0_s0.png"}}
    assert "CLIP score 0.310" in c.text and "validation loss on its own style: 0.1500 (base model 0.2000, -25%)" in c.text
    with pytest.raises(StyleMixError, match="exists"):
        build("openmoji", workspace / "models/lora/openmoji", tmp_path / "hub")


def test_a_combination_card_names_its_components_and_a_hub_base(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    c = card(COMBO, workspace / "models/merged" / COMBO, [])
    assert c.data.instance_prompt == "omstyle, lastyle" and "openmoji x 0.5, lineart x 0.5" in c.text
    monkeypatch.setattr("stylemix.commands.publishing.read_info", lambda folder: {"trigger": "x", "base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5"})
    assert card("openmoji", workspace / "models/lora/openmoji", []).data.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_upload_creates_the_repo_and_sends_the_folder_in_one_commit(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw)) or f"https://hf.co/{repo}")
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    assert upload(tmp_path, "me/wc", True, "openmoji") == "https://hf.co/me/wc"
    assert calls == [("create", "me/wc", {"private": True, "repo_type": "model", "exist_ok": True}),
                     ("upload", {"folder_path": tmp_path, "repo_id": "me/wc", "repo_type": "model",
                                 "commit_message": "stylemix: publish openmoji"})]


def test_offline_the_upload_says_so(tmp_path):
    with pytest.raises(StyleMixError, match="HF_HUB_OFFLINE=1: publishing needs the network"):
        upload(tmp_path, "me/wc", False, "openmoji")


def test_the_readme_publish_block(workspace):
    for line in commands("publish"):
        result = subprocess.run(["bash", "-c", line], cwd=workspace, env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert (workspace / "hub/openmoji/README.md").is_file()


def test_the_hub_token_reaches_no_file_log_card_or_params(workspace, monkeypatch, tmp_path, capsys):
    """publish takes the token where huggingface_hub looks (HF_TOKEN, `huggingface-cli login`), never from
    params.yaml, which refuses a key for one: with a token set, what is uploaded, what is printed and the
    workspace's models, reports and params hold no trace of it."""
    import argparse

    from stylemix import params
    from stylemix.commands import publish

    token = "hf_" + "Zq7sEcReT" * 4
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.chdir(workspace)
    uploaded = {}
    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", lambda self, repo, **kw: f"https://hf.co/{repo}")
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", lambda self, folder_path, **kw: uploaded.update(
        {p.relative_to(folder_path).as_posix(): p.read_bytes() for p in folder_path.rglob("*") if p.is_file()}))
    parser = argparse.ArgumentParser()
    publish.add_arguments(parser)
    publish.run(parser.parse_args(["openmoji", "--repo", "me/openmoji"]))
    assert "README.md" in uploaded and "pytorch_lora_weights.safetensors" in uploaded
    assert not [name for name, data in uploaded.items() if token.encode() in data]
    out = capsys.readouterr()
    assert token not in out.out + out.err
    assert not [p for root in ("models", "reports", "params.yaml") for p in [workspace / root, *(workspace / root).rglob("*")]
                if p.is_file() and token.encode() in p.read_bytes()]
    raw = (workspace / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(raw + f"\nhub:\n  token: {token}\n")
    with pytest.raises(StyleMixError, match="hub: unknown key") as err:
        params.load("styles", path=tmp_path / "params.yaml")
    assert token not in str(err.value)
