"""Single-file checkpoints, offline: the shipped SD 1.5 / SDXL configs are the real models', tiny
models written in the original layout load back through the base stage's path bit for bit with no
network, and the options a community file needs (no VAE, no `text_model.` level, v-prediction)."""
import subprocess
from types import SimpleNamespace

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    infer_diffusers_model_type,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from stylemix import params
from stylemix.errors import StyleMixError
from stylemix.models import single_file
from stylemix.models.base_model import build_tiny, load_pipeline
from tests.e2e import ENV
from tests.readme import commands
from tests.ui_workspace import make_workspace

COMPONENTS = ["unet", "vae", "text_encoder", "text_encoder_2"]


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def tiny_file(request, tmp_path_factory):
    """A tiny pipeline as a diffusers folder (its configs) and the same weights as one float32 single file."""
    folder = build_tiny(tmp_path_factory.mktemp(request.param) / "model", sdxl=request.param == "sdxl")
    pipe = load_pipeline(str(folder))
    path = folder.parent / "model.safetensors"
    single_file.save(pipe, path, torch.float32, {"format": "pt"})
    return request.param, folder, path, pipe


def assert_same_weights(a, b, names=COMPONENTS):
    for name in names:
        if getattr(a, name, None) is None:
            continue
        left, right = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert left.keys() == right.keys(), name
        assert all(torch.equal(left[k], right[k]) for k in left), f"{name} differs"


@pytest.mark.parametrize("arch, kind", [("sd15", "v1"), ("sdxl", "xl_base")])
def test_the_shipped_configs_are_the_real_models(arch, kind):
    """Built without memory (meta tensors): the real parameter counts, and in our layout they are
    what diffusers itself recognises as an SD 1.5 / SDXL base file and converts back key for key."""
    config = single_file.CONFIGS[arch]
    with init_empty_weights():
        pipe = SimpleNamespace(
            unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet")),
            vae=AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")),
            text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder")),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config / "text_encoder_2"))
            if arch == "sdxl" else None)
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in vars(pipe).items() if m is not None}
    assert counts == {"sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
                      "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                               "text_encoder_2": 694_659_840}}[arch]
    state = single_file.original_state_dict(pipe)
    assert infer_diffusers_model_type(state) == kind
    assert convert_ldm_unet_checkpoint(state, pipe.unet.config).keys() == pipe.unet.state_dict().keys()
    assert convert_ldm_vae_checkpoint(state, pipe.vae.config).keys() == pipe.vae.state_dict().keys()


def test_a_tiny_single_file_loads_back_through_the_base_stage_identical(tiny_file, tmp_path, monkeypatch, no_network):
    import stages.base

    arch, folder, path, pipe = tiny_file
    assert single_file.architecture_of(single_file.file_keys(path)) == arch
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"base:\n  model: {path}\n  config: {folder}\n")
    stages.base.main()
    base = params.load("base").base
    back = load_pipeline(base)
    assert type(back) is type(pipe) and back.scheduler.config == pipe.scheduler.config
    assert_same_weights(pipe, back)
    draw = dict(prompt="a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np")
    same = [p(**draw, generator=torch.Generator().manual_seed(0)).images for p in (pipe, back)]
    assert (same[0] == same[1]).all()


def test_an_older_file_without_the_text_model_level_loads_the_same_text_encoder(tiny_file, tmp_path):
    arch, folder, path, pipe = tiny_file
    prefix = single_file.CLIP[arch]
    old = {k.replace(f"{prefix}text_model.", prefix): v for k, v in load_file(path).items()}
    save_file(old, tmp_path / "old.safetensors")
    assert_same_weights(pipe, load_pipeline(params.Base(model=str(tmp_path / "old.safetensors"), config=str(folder))))


def test_a_file_without_a_vae_asks_for_base_vae(tiny_file, tmp_path):
    arch, folder, path, pipe = tiny_file
    save_file({k: v for k, v in load_file(path).items() if not k.startswith(single_file.VAE)}, tmp_path / "novae.safetensors")
    base = params.Base(model=str(tmp_path / "novae.safetensors"), config=str(folder))
    with pytest.raises(StyleMixError, match=r"novae.safetensors'?: the file holds no VAE .* set base.vae"):
        load_pipeline(base)
    assert_same_weights(pipe, load_pipeline(base.model_copy(update={"vae": str(folder / "vae")})))


def test_prediction_type_reaches_the_scheduler_training_reads(tiny_file):
    _, folder, path, _ = tiny_file
    pipe = load_pipeline(params.Base(model=str(path), config=str(folder), prediction_type="v_prediction"))
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_base_config_must_be_a_diffusers_folder(tmp_path):
    with pytest.raises(StyleMixError, match=r"base.config.*no model_index.json in .*nowhere"):
        params.validate({"base": {"model": "x.safetensors", "config": str(tmp_path / "nowhere")}})


def test_the_readme_export_block_bakes_the_style_into_a_checkpoint_that_loads_back(tmp_path, monkeypatch):
    """`stylemix export --fused`: the file holds the base with the LoRA fused at weight 1 (in float16),
    and the configs beside it load it back (the tiny is not SD 1.5's shape)."""
    from stylemix.drawing.drawer import Drawer

    root = make_workspace(tmp_path)
    for line in commands("export"):
        result = subprocess.run(["bash", "-c", line], cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert "load it with base.model: exports/openmoji.safetensors with base.config: exports/openmoji.configs" in result.stdout
    monkeypatch.chdir(root)
    back = load_pipeline(params.Base(model="exports/openmoji.safetensors", config="exports/openmoji.configs"))
    drawer = Drawer(params.load("base").base)
    to_q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    before = drawer.pipe.unet.state_dict()[to_q].clone()
    drawer.fuse({"openmoji": 1.0})
    for name in ("unet", "vae", "text_encoder"):
        fused, loaded = getattr(drawer.pipe, name).state_dict(), getattr(back, name).state_dict()
        assert fused.keys() == loaded.keys()
        assert all(torch.equal(fused[k].half().float(), loaded[k]) for k in fused), f"{name} is not the fused model"
    assert not torch.equal(before, drawer.pipe.unet.state_dict()[to_q])  # the LoRA is in the exported weights
