"""SDXL on `tiny-sdxl`: architecture detection, both text encoders and the time ids, LoRA files in
both layouts read back by diffusers' own SDXL loader, and the SD 1.5 / SDXL boundary."""
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from stages.caption import caption_style
from stages.encode import encode_style
from stages.filter import filter_style
from stylemix import params
from stylemix.adapters.load_check import adapter_deltas, kohya_deltas
from stylemix.adapters.loading import load_adapter, load_factors, read_info_for
from stylemix.adapters.lora_files import add_lora, save_lora
from stylemix.data.conditioning import encode_text, text_encoders, tokenize
from stylemix.data.latent_cache import LatentCache
from stylemix.demo.sample import build_style
from stylemix.errors import StyleMixError
from stylemix.mixing.merging import merge_combo
from stylemix.models.base_model import SD15, SDXL, architecture, build_tiny, load_pipeline
from stylemix.models.single_file import architecture_of, file_keys
from stylemix.outputs import read_jsonl
from stylemix.training.loop import train_style

RESOLUTION = 32
# Attention and resnet layers: every kind of layer the kohya SDXL (sgm) names cover.
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "conv2", "time_emb_proj", "conv_shortcut"]


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny-sdxl") / "model", sdxl=True)


def make_params(model, source, text_encoder=False, kind="lora") -> params.Params:
    return params.validate({
        "base": {"model": str(model), "resolution": RESOLUTION, "buckets": {"enabled": True, "step": 8}},
        "styles": {"openmoji": {"source": str(source), "trigger": "omstyle"}},
        "lora": {"rank": 4, "alpha": 8, "targets": TARGETS, "text_encoder": text_encoder, "type": kind},
        "train": {"max_steps": 4, "batch_size": 2, "lr": 1e-2, "checkpoint_every": 2, "validation_steps": 2,
                  "validation_prompts": ["a cat"], "caption_dropout": 0.3},
    })


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_sdxl):
    """Six openmojis (in three aspect ratios) filtered into buckets, captioned and encoded for tiny-sdxl."""
    root = tmp_path_factory.mktemp("sdxl")
    (root / "src").mkdir()
    build_style("openmoji", root / "src", count=6, seed=0)
    noise = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "src/wide.png")  # not square: a crop SDXL should be told of
    p = make_params(tiny_sdxl, root / "src")
    filter_style("openmoji", p.styles["openmoji"], params.Filter(), p.base, root / "filtered", root / "reports")
    caption_style("openmoji", params.Caption(), root / "filtered", root / "captions")
    encode_style("openmoji", p.styles["openmoji"], p.base, root / "filtered", root / "captions", root / "latents")
    return root


def test_the_architecture_comes_from_the_model(tiny_sdxl, tiny_model, tmp_path):
    assert isinstance(load_pipeline(str(tiny_sdxl)), StableDiffusionXLPipeline)
    assert architecture(load_pipeline(str(tiny_sdxl))) == SDXL and architecture(load_pipeline(str(tiny_model))) == SD15
    # Single files: SDXL's second text encoder lives under conditioner.embedders.1 in the original layout.
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.ones(1)}, tmp_path / "xl.safetensors")
    save_file({"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(1)}, tmp_path / "v1.safetensors")
    arch = {name: architecture_of(file_keys(tmp_path / f"{name}.safetensors")) for name in ("xl", "v1")}
    assert arch == {"xl": SDXL, "v1": SD15}


@pytest.mark.parametrize("sdxl", [True, False])
def test_text_conditioning_is_what_the_pipelines_compute(tiny_sdxl, tiny_model, sdxl):
    pipe = load_pipeline(str(tiny_sdxl if sdxl else tiny_model))
    texts = ["omstyle, a cat", "a rocket on a launch pad"]
    with torch.no_grad():
        hidden, pooled = encode_text(text_encoders(pipe), list(tokenize(pipe, texts).values()))
        expected = pipe.encode_prompt(texts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    assert torch.allclose(hidden, expected[0], atol=1e-6)
    if sdxl:
        assert hidden.shape == (2, 77, 32 + 48) and torch.allclose(pooled, expected[2], atol=1e-6)
    else:
        assert pooled is None


def test_encode_caches_both_encoders_and_the_time_ids_of_each_crop(data):
    cache = LatentCache(data / "latents/openmoji/latents.safetensors")
    records = {r["file_name"]: r for r in read_jsonl(data / "filtered/openmoji/index.jsonl")}
    assert len(cache.buckets) == 3 and sorted(cache.files) == sorted(records)
    ids, start = {}, 0
    for count, group in zip(cache.buckets.values(), cache.groups()):
        assert group["text_hidden"].shape == (count, 77, 32 + 48) and group["text_pooled"].shape == (count, 32)
        assert group["input_ids_2"].shape == (count, 77) and group["empty_text_pooled"].shape == (1, 32)
        ids |= dict(zip(cache.files[start : start + count], group["time_ids"].tolist()))
        start += count
    for name, row in records.items():
        width, height = row["original_size"]
        assert ids[name] == [height, width, *row["crop_top_left"], row["bucket"][1], row["bucket"][0]]
    wide = next(ids[name] for name, row in records.items() if row["source"] == "wide.png")
    assert wide == [60, 90, 1, 0, 24, 40]  # 90x60 into the 40x24 bucket: scaled to 40x27, cropped 1 px from the top
    assert cache.architecture == SDXL


def unet_and_text(pipe, cond_ids):
    """The UNet's prediction and both encoders' conditioning for fixed inputs."""
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 700])
    times = torch.tensor([[40.0, 56.0, 0.0, 12.0, RESOLUTION, RESOLUTION]] * 2)
    with torch.no_grad():
        hidden, pooled = encode_text(text_encoders(pipe), cond_ids)
        out = pipe.unet(x, t, hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": times}).sample
    return out, hidden, pooled


@pytest.mark.parametrize("text_encoder, kind", [(False, "lora"), (True, "lora"), (False, "loha"), (False, "lokr")],
                         ids=["unet", "text-encoder", "loha", "lokr"])
def test_sdxl_lora_files_reproduce_the_trained_model(data, tmp_path, tiny_sdxl, text_encoder, kind):
    p = make_params(tiny_sdxl, data / "src", text_encoder, kind)
    trained = train_style("openmoji", p, out=tmp_path / "lora", ckpt_root=tmp_path / "ckpt", logs=tmp_path / "logs",
                          latents=data / "latents")["pipe"]
    ids = list(tokenize(trained, ["omstyle, a cat"] * 2).values())
    expected, base = unet_and_text(trained, ids), unet_and_text(load_pipeline(str(tiny_sdxl)), ids)
    folder = tmp_path / "lora/openmoji"
    kohya = load_file(folder / "openmoji_kohya.safetensors")
    unet_keys = [k for k in kohya if k.startswith("lora_unet_")]
    assert all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")) for k in unet_keys)
    assert any("_in_layers_2." in k for k in kohya) and any("_skip_connection." in k for k in kohya)
    assert {k.split("_text_model")[0] for k in kohya if k.startswith("lora_te")} == ({"lora_te1", "lora_te2"} if text_encoder else set())
    for source in (folder, folder / "openmoji_kohya.safetensors"):  # diffusers layout, then kohya's
        fresh = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl))
        if kind == "lora":
            fresh.load_lora_weights(source)
        elif source.suffix:  # LyCORIS's layout with the sgm UNet's names, by the formula A1111 and ComfyUI apply
            with torch.no_grad():
                for module, delta in kohya_deltas(source, fresh, {"unet": list(adapter_deltas(trained)["unet"])})["unet"].items():
                    fresh.unet.get_submodule(module).weight += delta.reshape(fresh.unet.get_submodule(module).weight.shape)
        else:
            load_adapter(fresh, folder, "openmoji")  # peft, from the config the file carries
        got = unet_and_text(fresh, ids)
        for g, e in zip(got, expected):
            assert torch.allclose(g, e, atol=1e-5), source
    assert (expected[0] - base[0]).abs().max() > 1e-3
    assert ((expected[1] - base[1]).abs().max() > 1e-3) == text_encoder
    assert ((expected[2] - base[2]).abs().max() > 1e-3) == text_encoder
    assert (folder / "validation.png").is_file()


def random_lora(model, folder, seed, text_encoder=True):
    """A LoRA with a non-zero, trained-looking update, without training."""
    pipe = load_pipeline(str(model))
    torch.manual_seed(seed)
    add_lora(pipe.unet, text_encoders(pipe), params.Lora(rank=2, alpha=4, text_encoder=text_encoder))
    for module in (pipe.unet, *text_encoders(pipe)):
        for name, weight in module.named_parameters():
            if "lora_B" in name:
                weight.data.normal_(0, 0.2)
    save_lora(folder, folder.name, pipe, {"trigger": f"{folder.name}style", "base_model": str(model)})
    return pipe


def test_sdxl_merge_equals_diffusers_set_adapters(tiny_sdxl, tmp_path):
    for seed, name in enumerate(("ink", "clay")):
        random_lora(tiny_sdxl, tmp_path / "loras" / name, seed)
    weights = {"ink": 0.7, "clay": 0.3}
    merge_combo("mix", params.Combo(weights=weights), tmp_path / "loras", tmp_path / "merged")
    assert set(load_factors(tmp_path / "merged/mix")) == {"unet", "text_encoder", "text_encoder_2"}
    merged, separate = load_pipeline(str(tiny_sdxl)), load_pipeline(str(tiny_sdxl))
    merged.load_lora_weights(tmp_path / "merged/mix")
    for name in weights:
        separate.load_lora_weights(tmp_path / "loras" / name, adapter_name=name)
    separate.set_adapters(list(weights), list(weights.values()))
    ids = list(tokenize(merged, ["inkstyle, claystyle, a cat"] * 2).values())
    for g, e in zip(unet_and_text(merged, ids), unet_and_text(separate, ids)):
        assert torch.allclose(g, e, atol=1e-5)


def test_sd15_and_sdxl_loras_never_mix(tiny_sdxl, tiny_model, tmp_path):
    random_lora(tiny_sdxl, tmp_path / "xl", 0, text_encoder=False)
    random_lora(tiny_model, tmp_path / "v1", 1, text_encoder=False)
    with pytest.raises(StyleMixError, match=r"merge.combos.both mixes LoRAs of different model families \(sd15: v1; sdxl: xl\)"):
        merge_combo("both", params.Combo(weights={"xl": 0.5, "v1": 0.5}), tmp_path, tmp_path / "merged")
    with pytest.raises(StyleMixError, match=r"xl is a LoRA for SDXL and base.model is SD 1.5"):
        read_info_for(tmp_path / "xl", load_pipeline(str(tiny_model)))
    assert isinstance(load_pipeline(str(tiny_model)), StableDiffusionPipeline)


def test_layers_without_a_kohya_sdxl_name_are_refused_before_training(tiny_sdxl):
    pipe = load_pipeline(str(tiny_sdxl))
    with pytest.raises(StyleMixError, match=r"SDXL layer conv_in is outside the UNet's resnets and attentions"):
        add_lora(pipe.unet, text_encoders(pipe), params.Lora(targets=["to_q", "conv_in"]))
