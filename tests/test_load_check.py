"""The load check: every LoRA file train@S and merge@C write is loaded back through diffusers and must
put the trained (merged) update on every layer; a broken file stops the stage naming the file and layer."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stylemix import params
from stylemix.adapters.load_check import adapter_deltas, check_lora_files, kohya_deltas
from stylemix.adapters.loading import load_adapter
from stylemix.adapters.lora_files import WEIGHTS, add_lora, block_preset, save_lora
from stylemix.errors import StyleMixError
from stylemix.mixing import merging
from stylemix.models.base_model import build_tiny, load_pipeline
from tests.test_merge import random_lora

KOHYA = "ink_kohya.safetensors"


def trained(model, folder, sdxl=False, **lora):
    """A pipeline with a trained-looking LoRA (attention, feed-forward and text encoders unless `lora`
    says otherwise) saved to `folder`."""
    pipe = load_pipeline(str(model))
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if sdxl else [])
    lora = {"targets": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]} | lora
    add_lora(pipe.unet, encoders, params.Lora(**{"rank": 4, "alpha": 2, "text_encoder": True} | lora))
    torch.manual_seed(0)
    for module in (pipe.unet, *encoders):
        for name, weight in module.named_parameters():
            if "lora_B" in name or "hada_" in name or "lokr_" in name:  # LoHa / LoKr start at zero too
                weight.data.normal_(0, 0.2)
            elif "lora_magnitude_vector" in name:  # DoRA's: each output channel's norm, trained away from the base's
                weight.data *= 1 + 0.2 * torch.randn_like(weight)
    save_lora(folder, "ink", pipe, {"trigger": "inkstyle", "base_model": "tiny", "resolution": 32})
    return pipe, ["unet"] + (["text_encoder"] + (["text_encoder_2"] if sdxl else []) if lora.get("text_encoder", True) else [])


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_both_files_load_back_exactly(tmp_path, sdxl):
    pipe, components = trained(build_tiny(tmp_path / "model", sdxl=sdxl), tmp_path / "ink", sdxl)
    ids = torch.randint(0, 49407, (1, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = pipe.text_encoder(ids)[0]
        check_lora_files(tmp_path / "ink", [WEIGHTS, KOHYA], pipe, adapter_deltas(pipe), "ink")  # raises on any difference
        after = pipe.text_encoder(ids)[0]
    assert pipe.get_list_adapters() == {c: ["default"] for c in components}  # the check's adapter is gone again
    assert torch.equal(before, after)  # and the trained one still on, at its scale (validation images follow)


@pytest.mark.parametrize("sdxl, targets", [(False, "style"), (True, "style"), (False, "all")], ids=["sd15-style", "sdxl-style", "sd15-all"])
def test_locon_and_block_presets_load_back_and_draw_as_trained(tmp_path, sdxl, targets):
    """LoCon (the ResNets' convolutions at rank 3, alpha 6) with a target preset: every layer where the
    preset says, and both files put the trained update there and give the trained model's outputs."""
    model = build_tiny(tmp_path / "model", sdxl=sdxl)
    pipe, _ = trained(model, tmp_path / "ink", sdxl, targets=targets, conv_rank=3, conv_alpha=6)
    layers = [m for m in adapter_deltas(pipe)["unet"]]
    convs = [m for m in layers if ".resnets." in m and m.endswith((".conv1", ".conv2"))]
    block = "up_blocks.0.attentions.1." if sdxl else "up_blocks.1.attentions.1."  # B-LoRA's; the tiny SD's second level's
    rest = [m for m in layers if m not in convs]
    assert len(convs) == sum(1 for n, _ in pipe.unet.named_modules() if ".resnets." in n and n.endswith((".conv1", ".conv2")))
    if targets == "style":
        assert rest and all(m.startswith(block) for m in rest) and any(m.endswith("proj_in") for m in rest)
    else:
        assert {m.split(".")[0] for m in rest} == {"down_blocks", "mid_block", "up_blocks"} and any(m.endswith("ff.net.2") for m in rest)
    check_lora_files(tmp_path / "ink", [WEIGHTS, KOHYA], pipe, adapter_deltas(pipe), "ink")  # raises on any difference
    want = unet_out(pipe, sdxl)
    for file in (WEIGHTS, KOHYA):
        fresh = load_pipeline(str(model))
        fresh.load_lora_weights(str(tmp_path / "ink"), weight_name=file)
        assert torch.allclose(unet_out(fresh, sdxl), want, atol=1e-5), file
    assert (unet_out(load_pipeline(str(model)), sdxl) - want).abs().max() > 1e-3  # the LoRA changes the output


def unet_out(p, sdxl):
    """The UNet's prediction on a fixed latent and token ids through the pipeline's text encoder(s)."""
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    ids = torch.randint(0, 49407, (1, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if not sdxl:
            return p.unet(x, t, p.text_encoder(ids)[0]).sample
        hidden = torch.cat([p.text_encoder(ids, output_hidden_states=True).hidden_states[-2],
                            p.text_encoder_2(ids, output_hidden_states=True).hidden_states[-2]], -1)
        pooled = p.text_encoder_2(ids).text_embeds
        return p.unet(x, t, hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": torch.zeros(1, 6)}).sample


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_dora_files_load_back_and_draw_as_trained(tmp_path, sdxl):
    """DoRA (with LoCon and the text encoders): the diffusers file through diffusers, the kohya file
    (LyCORIS's dora_scale) through the reference formula, each gives the trained model's outputs."""
    model = build_tiny(tmp_path / "model", sdxl=sdxl)
    pipe, components = trained(model, tmp_path / "ink", sdxl, type="dora", conv_rank=3, conv_alpha=6, text_encoder=False)
    trained_deltas = adapter_deltas(pipe)
    check_lora_files(tmp_path / "ink", [WEIGHTS, KOHYA], pipe, trained_deltas, "ink")  # raises on any difference
    want = unet_out(pipe, sdxl)
    fresh = load_pipeline(str(model))
    fresh.load_lora_weights(str(tmp_path / "ink"), weight_name=WEIGHTS)
    assert torch.allclose(unet_out(fresh, sdxl), want, atol=1e-5)
    fresh = load_pipeline(str(model))
    with torch.no_grad():  # the kohya file by LyCORIS's formula, baked into the base weights
        for component, layers in kohya_deltas(tmp_path / "ink" / KOHYA, fresh, {c: list(trained_deltas[c]) for c in components}).items():
            for module, delta in layers.items():
                weight = getattr(fresh, component).get_submodule(module).weight
                weight += delta.reshape(weight.shape)
    assert torch.allclose(unet_out(fresh, sdxl), want, atol=1e-5)
    kohya = load_file(tmp_path / "ink" / KOHYA)
    scales = {k: v.shape for k, v in kohya.items() if k.endswith(".dora_scale")}
    assert len(scales) == sum(len(d) for d in trained_deltas.values())  # every layer has its magnitude
    assert all(shape[1:] in ((1,), (1, 1, 1)) for shape in scales.values()) and any(len(s) == 4 for s in scales.values())
    with safe_open(tmp_path / "ink" / KOHYA, "pt") as f:
        assert json.loads(f.metadata()["ss_network_args"])["dora_wd"] == "True"
    plain = load_pipeline(str(model))  # diffusers reads the kohya file as a plain LoRA (it drops dora_scale):
    plain.load_lora_weights(str(tmp_path / "ink"), weight_name=KOHYA)  # why the model card sends diffusers users
    assert (unet_out(plain, sdxl) - want).abs().max() > 1e-3           # to the other file


@pytest.mark.parametrize("kind", ["loha", "lokr"])
@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_lycoris_files_load_back_and_draw_as_trained(tmp_path, sdxl, kind):
    """LoHa and LoKr (with LoCon's convolutions at their own rank and alpha): the diffusers-layout file
    through peft (load_adapter), the kohya file by LyCORIS's formula as A1111 and ComfyUI apply it;
    each gives the trained model's outputs. diffusers' own loader reads neither (why load_adapter)."""
    model = build_tiny(tmp_path / "model", sdxl=sdxl)
    pipe, components = trained(model, tmp_path / "ink", sdxl, type=kind, rank=2, alpha=1, conv_rank=3, conv_alpha=6, text_encoder=False)
    trained_deltas = adapter_deltas(pipe)
    check_lora_files(tmp_path / "ink", [WEIGHTS, KOHYA], pipe, trained_deltas, "ink")  # raises on any difference
    want = unet_out(pipe, sdxl)
    fresh = load_pipeline(str(model))
    load_adapter(fresh, tmp_path / "ink", "ink")
    assert torch.allclose(unet_out(fresh, sdxl), want, atol=1e-5)
    fresh = load_pipeline(str(model))
    with torch.no_grad():  # the kohya file by the formula, baked into the base weights
        for module, delta in kohya_deltas(tmp_path / "ink" / KOHYA, fresh, {"unet": list(trained_deltas["unet"])})["unet"].items():
            weight = fresh.unet.get_submodule(module).weight
            weight += delta.reshape(weight.shape)
    assert torch.allclose(unet_out(fresh, sdxl), want, atol=1e-5)
    assert (unet_out(load_pipeline(str(model)), sdxl) - want).abs().max() > 1e-3  # the adapter changes the output
    kohya = load_file(tmp_path / "ink" / KOHYA)
    first = {"loha": "hada_w1_a", "lokr": "lokr_w1"}[kind]
    assert sum(k.endswith("." + first) for k in kohya) == len(trained_deltas["unet"]) == sum(k.endswith(".alpha") for k in kohya)
    assert not any("lora_down" in k for k in kohya) and any("resnets_0_conv1" in k or "in_layers_2" in k for k in kohya)
    with safe_open(tmp_path / "ink" / KOHYA, "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"])["algo"] == kind
    assert json.loads(meta["ss_network_args"])["conv_dim"] == "3"
    for file in (WEIGHTS, KOHYA):
        with pytest.raises(ValueError):
            load_pipeline(str(model)).load_lora_weights(str(tmp_path / "ink"), weight_name=file)


@pytest.mark.parametrize("kind, file, edit, message", [
    ("loha", KOHYA, lambda s: s.update({k.replace("hada_w2_b", "hada_w2_B"): s.pop(k) for k in [k for k in s if k.endswith("mid_block_attentions_0_transformer_blocks_0_attn2_to_v.hada_w2_b")]}),
     r"ink_kohya.safetensors: layer lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v has an incomplete"),
    ("lokr", KOHYA, lambda s: [s.pop(k) for k in [k for k in s if "up_blocks_0_resnets_1_conv2." in k]],
     r"ink_kohya.safetensors \(unet\): 1 trained layer\(s\) not loaded, e.g. up_blocks.0.resnets.1.conv2"),
    ("loha", KOHYA, lambda s: s.update({k: v * 2 for k, v in s.items() if k.endswith("down_blocks_0_attentions_0_proj_in.alpha")}),
     r"ink_kohya.safetensors \(unet\): layer down_blocks.0.attentions.0.proj_in loads a different update than was trained"),
    ("lokr", WEIGHTS, lambda s: s.update({k: v * 1.5 for k, v in s.items() if k.endswith("up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.lokr_w1")}),
     r"pytorch_lora_weights.safetensors \(unet\): layer up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2 loads a different"),
])
def test_a_broken_lycoris_file_is_named_with_its_layer(tmp_path, tiny_model, kind, file, edit, message):
    pipe, _ = trained(tiny_model, tmp_path / "ink", type=kind, rank=2, alpha=1, conv_rank=2, conv_alpha=1, text_encoder=False,
                      targets="all")
    broken(tmp_path / "ink" / file, edit)
    with pytest.raises(StyleMixError, match=message):
        check_lora_files(tmp_path / "ink", [WEIGHTS, KOHYA], pipe, adapter_deltas(pipe), "models/lora/ink")


def test_dora_at_weight_zero_is_not_the_base_model(tmp_path, tiny_model):
    """peft's DoRA keeps its magnitude at adapter weight 0 (m / ||W|| rescales W): what the README says."""
    pipe, _ = trained(tiny_model, tmp_path / "ink", type="dora", text_encoder=False)
    pipe.set_adapters(["default"], [0.0])
    at_zero = unet_out(pipe, False)
    pipe.disable_lora()
    assert (unet_out(pipe, False) - at_zero).abs().max() > 1e-3


def test_block_presets_name_b_loras_block_on_sdxl_and_the_measured_one_on_sd15():
    from types import SimpleNamespace

    configs = {"sd15": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
               "sdxl": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")}
    unet = {k: SimpleNamespace(config={"up_block_types": v, "addition_embed_type": "text_time" if k == "sdxl" else None})
            for k, v in configs.items()}
    assert block_preset(unet["sdxl"], "style") == "up_blocks.0.attentions.1"  # B-LoRA's
    assert block_preset(unet["sdxl"], "content") == "up_blocks.0.attentions.0"
    assert block_preset(unet["sd15"], "style") == "up_blocks.2.attentions.1"  # the second of its three attention levels


def broken(path, edit):
    state = load_file(path)
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    edit(state)
    save_file(state, path, metadata)


@pytest.mark.parametrize("file, edit, message", [
    (KOHYA, lambda s: s.update({k.replace("attn2_to_q", "attn2_to_query"): s.pop(k) for k in [k for k in s if "attn2_to_q." in k]}),
     r"ink_kohya.safetensors \(unet\): \d+ trained layer\(s\) not loaded, e.g. \S+attn2.to_q"),
    (KOHYA, lambda s: [s.pop(k) for k in [k for k in s if "lora_te_" in k]],
     r"ink_kohya.safetensors \(text_encoder\): 8 trained layer\(s\) not loaded"),
    (KOHYA, lambda s: s.update({k: v * 2 for k, v in s.items() if k.endswith("ff_net_2.alpha")}),
     r"ink_kohya.safetensors \(unet\): layer \S+ff.net.2 loads a different update than was trained"),
    (WEIGHTS, lambda s: [s.pop(k) for k in [k for k in s if "ff.net.0.proj" in k and "down_blocks.0." in k]],
     r"pytorch_lora_weights.safetensors \(unet\): 1 trained layer\(s\) not loaded, e.g. down_blocks.0\S+ff.net.0.proj"),
    (KOHYA, lambda s: s.update({k: v * 2 for k, v in s.items() if k.endswith("up_blocks_1_resnets_0_conv2.lora_up.weight")}),
     r"ink_kohya.safetensors \(unet\): layer up_blocks.1.resnets.0.conv2 loads a different update than was trained"),
    (WEIGHTS, lambda s: [s.pop(k) for k in [k for k in s if "mid_block.resnets.1.conv1" in k]],
     r"pytorch_lora_weights.safetensors \(unet\): 1 trained layer\(s\) not loaded, e.g. mid_block.resnets.1.conv1"),
])
def test_a_broken_file_is_named_with_its_layer(tmp_path, tiny_model, file, edit, message):
    pipe, components = trained(tiny_model, tmp_path / "ink", conv_rank=2, conv_alpha=1)
    broken(tmp_path / "ink" / file, edit)
    with pytest.raises(StyleMixError, match=message):
        check_lora_files(tmp_path / "ink", [WEIGHTS, KOHYA], pipe, adapter_deltas(pipe), "models/lora/ink")


@pytest.mark.parametrize("file, edit, message", [
    (KOHYA, lambda s: [s.pop(k) for k in [k for k in s if k.endswith("up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v.dora_scale")]],
     r"ink_kohya.safetensors \(unet\): layer up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v loads a different update"),
    (KOHYA, lambda s: s.update({k.replace("dora_scale", "dora_scales"): s.pop(k) for k in [k for k in s if k.endswith("mid_block_resnets_0_conv1.dora_scale")]}),
     r"ink_kohya.safetensors: 1 tensor\(s\) no layer reads, e.g. lora_unet_mid_block_resnets_0_conv1.dora_scales"),
    (KOHYA, lambda s: s.update({k: v * 1.01 for k, v in s.items() if k.endswith("down_blocks_1_attentions_0_transformer_blocks_0_ff_net_2.dora_scale")}),
     r"ink_kohya.safetensors \(unet\): layer down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2 loads a different update"),
    (WEIGHTS, lambda s: s.update({k: v * 1.01 for k, v in s.items() if k.endswith("down_blocks.0.resnets.0.conv2.lora_magnitude_vector")}),
     r"pytorch_lora_weights.safetensors \(unet\): layer down_blocks.0.resnets.0.conv2 loads a different update"),
])
def test_a_broken_dora_file_is_named_with_its_layer(tmp_path, tiny_model, file, edit, message):
    pipe, components = trained(tiny_model, tmp_path / "ink", type="dora", conv_rank=2, conv_alpha=1, text_encoder=False)
    broken(tmp_path / "ink" / file, edit)
    with pytest.raises(StyleMixError, match=message):
        check_lora_files(tmp_path / "ink", [WEIGHTS, KOHYA], pipe, adapter_deltas(pipe), "models/lora/ink")


@pytest.mark.parametrize("combo", [{"method": "linear", "blocks": {"ink": {"down": 0, "text_encoder": 0.5}}}, {"method": "ties", "density": 0.5, "rank": 3}],
                         ids=["linear", "ties"])
def test_merged_files_load_back_and_a_broken_one_stops_the_merge(tmp_path, tiny_model, monkeypatch, combo):
    for name, seed, text_encoder in (("ink", 1, True), ("clay", 2, False)):
        (tmp_path / "loras" / name).mkdir(parents=True)
        random_lora(tiny_model, tmp_path / "loras" / name, rank=2, alpha=4, text_encoder=text_encoder, seed=seed)
    pipe, spec = load_pipeline(str(tiny_model)), params.Combo(weights={"ink": 0.6, "clay": 0.4}, **combo)
    merging.merge_combo("mix", spec, tmp_path / "loras", tmp_path / "merged", tiny_model, check_with=pipe)  # raises on any difference
    assert pipe.get_list_adapters() == {}  # the check's adapter is gone again
    save = merging.save_states

    def drop_a_layer(folder, name, states, info):  # a writer that loses a layer of the kohya file
        save(folder, name, states, info)
        broken(folder / f"{name}_kohya.safetensors", lambda s: [s.pop(k) for k in [k for k in s if "attn1_to_k." in k]])

    monkeypatch.setattr(merging, "save_states", drop_a_layer)
    message = r"merged/mix2/mix2_kohya.safetensors \(unet\): \d+ merged layer\(s\) not loaded, e.g. \S+attn1.to_k"
    with pytest.raises(StyleMixError, match=message):
        merging.merge_combo("mix2", spec, tmp_path / "loras", tmp_path / "merged", tiny_model, check_with=pipe)
    assert not (tmp_path / "merged/mix2").exists()  # nothing written that looks finished


def test_every_type_draws_live_and_fused_as_its_weighted_update(tmp_path, tiny_model):
    """A LoRA, a LoHa (with LoCon convolutions) and a LoKr drawn together as the drawer draws (each loaded
    by load_adapter, weighted by set_adapters) put exactly the weighted sum of their updates on the base
    model; fused into the weights, the same."""
    from stylemix.adapters import lycoris
    from stylemix.adapters.loading import load_factors, lycoris_layers, weights_file
    from stylemix.adapters.lora_files import module_alpha, module_rank, update
    from stylemix.adapters.schedules import Mix
    from stylemix.drawing.drawer import Drawer

    for name, kind, seed in (("ink", "lora", 1), ("hada", "loha", 2), ("kron", "lokr", 3)):
        (tmp_path / name).mkdir()
        random_lora(tiny_model, tmp_path / name, rank=2, alpha=1, text_encoder=False, seed=seed, type=kind,
                    conv_rank=0 if kind == "lokr" else 2)
    weights = {"ink": 0.6, "hada": 0.5, "kron": -0.3}
    drawer = Drawer(params.Base(model=str(tiny_model), resolution=32), roots=(tmp_path,))
    drawer.infos(list(weights))
    Mix(weights).apply(drawer.pipe)
    expected = load_pipeline(str(tiny_model))
    with torch.no_grad():
        for name, weight in weights.items():
            if name == "ink":
                layers = {m: update(*f) for m, f in load_factors(tmp_path / name)["unet"].items()}
            else:
                _, config, found = lycoris_layers(weights_file(tmp_path / name))
                layers = {m: lycoris.delta(t, module_alpha(config, m) / module_rank(config, m)) for m, t in found.items()}
            for module, delta in layers.items():
                base = expected.unet.get_submodule(module).weight
                base += weight * delta.reshape(base.shape)
    want = unet_out(expected, False)
    assert torch.allclose(unet_out(drawer.pipe, False), want, atol=1e-5)
    drawer.fuse(weights)
    assert torch.allclose(unet_out(drawer.pipe, False), want, atol=1e-5)
    assert (unet_out(load_pipeline(str(tiny_model)), False) - want).abs().max() > 1e-3
