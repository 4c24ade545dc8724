"""End to end on FLUX.1 and SD 3.5: the reduced demo on `tiny-flux` and `tiny-sd3`, every stage through
dvc in a temporary git repo of its own, with the settings that belong to the UNets taken out (as
presets/flux-dev.yaml and presets/sd35-medium.yaml take them out for the real models)."""
import json

import pytest
from PIL import Image
from safetensors import safe_open

from tests.e2e import EVERY_STAGE, STYLES, make_repo, ran, reduce, sh


def flow_demo(model: str):
    def edit(raw: dict) -> None:
        reduce(raw)
        raw["base"] |= {"model": model, "buckets": raw["base"]["buckets"] | {"step": 16}}  # 2x2 latent patches
        raw["lora"] |= {"conv_rank": 0, "targets": ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]}  # a transformer has no convolutions
        raw["styles"]["lineart"].pop("tokens")  # new tokens are CLIP's, and T5 reads the captions
        raw["train"] |= {"min_snr_gamma": None, "timesteps": {"sampling": "logit_normal", "weighting": "cosmap"},
                         "masked_loss": {"enabled": True}}
        raw["generate"] |= {"scheduler": "euler", "guidance_scale": 3.5}
        raw["prior"] |= {"images": 2, "steps": 2, "guidance_scale": 3.5}  # the base draws them with its own sampler
        raw["merge"]["combos"]["mix2"].pop("blocks")  # block weights name UNet blocks
        raw["merge"]["explore"]["pairs"]["ws2"].pop("blocks")
    return edit


@pytest.mark.parametrize("model, arch, pipeline", [("tiny-flux", "flux", "FluxPipeline"),
                                                   ("tiny-sd3", "sd3", "StableDiffusion3Pipeline")])
def test_the_demo_runs_every_stage_on_the_flow_models(tmp_path, model, arch, pipeline):
    repo = make_repo(tmp_path / "repo", flow_demo(model))
    assert ran(sh(repo, "dvc", "repro").stdout) == EVERY_STAGE
    assert json.loads((repo / "models/base/model_index.json").read_text())["_class_name"] == pipeline
    for folder in [repo / "models/lora" / s for s in STYLES] + [repo / "models/merged" / c for c in ("mix", "mix2")]:
        weights = safe_open(folder / "pytorch_lora_weights.safetensors", "pt")
        assert json.loads(weights.metadata()["stylemix"])["architecture"] == arch, folder
        assert weights.keys() and all(k.startswith("transformer.") for k in weights.keys()), folder
        assert (folder / f"{folder.name}_comfyui.safetensors").is_file(), folder  # read back by ComfyUI's formula at train / merge
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert list(metrics["models"]) == ["base", *STYLES, "mix", "mix2"]
    assert Image.open(repo / "reports/images/mix/p0_s0.png").size == (32, 32)
    assert len(list((repo / "data/prior/images").glob("*.png"))) == 2
    validation = json.loads((repo / "reports/validation.json").read_text())
    assert set(validation["loss"]) == {"base", *STYLES}
