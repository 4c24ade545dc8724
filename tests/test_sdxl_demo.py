"""End to end on SDXL: the README's `dvc exp run -S base.model=tiny-sdxl` on the reduced demo, in a
temporary git repo of its own (so it runs beside tests/test_pipeline.py under `make test`)."""
import json

from PIL import Image
from safetensors import safe_open

from tests.e2e import EVERY_STAGE, STYLES, make_repo, ran, reduce, run_block


def b_lora(raw: dict) -> None:
    reduce(raw)
    raw["lora"] |= {"targets": "style", "type": "dora"}  # B-LoRA's style block as DoRA, with the reduced demo's LoCon convolutions
    raw["prior"] |= {"images": 4, "steps": 2}  # prior preservation: SDXL's pooled embeddings and time ids for the base's pictures
    raw["train"]["masked_loss"] = {"enabled": True}  # and the emoji's alpha as the loss's mask


def test_the_sdxl_demo_runs_every_stage_on_sdxl(tmp_path):
    repo = make_repo(tmp_path / "repo", b_lora)
    log = run_block(repo, "sdxl-demo")
    assert ran(log) == EVERY_STAGE
    assert json.loads((repo / "models/base/model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    for folder in [repo / "models/lora" / s for s in STYLES] + [repo / "models/merged" / c for c in ("mix", "mix2")]:
        weights = folder / "pytorch_lora_weights.safetensors"
        assert json.loads(safe_open(weights, "pt").metadata()["stylemix"])["architecture"] == "sdxl", folder
        kohya = safe_open(folder / f"{folder.name}_kohya.safetensors", "pt").keys()
        unet = {k.split(".")[0] for k in kohya if k.startswith("lora_unet_")}
        # The style block is output_blocks.1.1 in the original UNet; the rest are the ResNets' convolutions.
        assert unet and all("output_blocks_1_1_" in k or k.endswith(("in_layers_2", "out_layers_3")) for k in unet), folder
        assert any(k.endswith("in_layers_2") for k in unet) and any("output_blocks_1_1_" in k for k in unet), folder
        # A style is a DoRA (LyCORIS's dora_scale on every layer); a merge of them a plain LoRA (svd)
        assert any(k.endswith(".dora_scale") for k in kohya) == (folder.parent.name == "lora"), folder
    for style in STYLES:
        meta = safe_open(repo / "models/lora" / style / f"{style}_kohya.safetensors", "pt").metadata()
        assert (meta["ss_num_reg_images"], meta["ss_masked_loss"]) == ("4", "True"), style
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert list(metrics["models"]) == ["base", *STYLES, "mix", "mix2"]
    assert Image.open(repo / "reports/images/mix/p0_s0.png").size == (32, 32)

