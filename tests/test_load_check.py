"""The load check: every LoRA file train@S and merge@C write is loaded back through diffusers and must
put the trained (merged) update on every layer; a broken file stops the stage naming the file and layer."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from stylemix import params
from stylemix.base_model import build_tiny, load_pipeline
from stylemix.errors import StyleMixError
from stylemix import merging
from stylemix.load_check import adapter_deltas, check_lora_files
from stylemix.lora_files import WEIGHTS, add_lora, save_lora
from tests.test_merge import random_lora

KOHYA = "ink_kohya.safetensors"


def trained(model, folder, sdxl=False):
    """A pipeline with a trained-looking LoRA (attention, feed-forward and text encoders) saved to `folder`."""
    pipe = load_pipeline(str(model))
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if sdxl else [])
    add_lora(pipe.unet, encoders, params.Lora(rank=4, alpha=2, text_encoder=True,
                                              targets=["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]))
    torch.manual_seed(0)
    for module in (pipe.unet, *encoders):
        for name, weight in module.named_parameters():
            if "lora_B" in name:
                weight.data.normal_(0, 0.2)
    save_lora(folder, "ink", pipe, {"trigger": "inkstyle", "base_model": "tiny", "resolution": 32})
    return pipe, ["unet", "text_encoder"] + (["text_encoder_2"] if sdxl else [])


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


def broken(path, edit):
    state = load_file(path)
    edit(state)
    save_file(state, path)


@pytest.mark.parametrize("file, edit, message", [
    (KOHYA, lambda s: s.update({k.replace("attn2_to_q", "attn2_to_query"): s.pop(k) for k in [k for k in s if "attn2_to_q." in k]}),
     r"ink_kohya.safetensors \(unet\): \d+ trained layer\(s\) not loaded, e.g. \S+attn2.to_q"),
    (KOHYA, lambda s: [s.pop(k) for k in [k for k in s if "lora_te_" in k]],
     r"ink_kohya.safetensors \(text_encoder\): 8 trained layer\(s\) not loaded"),
    (KOHYA, lambda s: s.update({k: v * 2 for k, v in s.items() if k.endswith("ff_net_2.alpha")}),
     r"ink_kohya.safetensors \(unet\): layer \S+ff.net.2 loads a different update than was trained"),
    (WEIGHTS, lambda s: [s.pop(k) for k in [k for k in s if "ff.net.0.proj" in k and "down_blocks.0." in k]],
     r"pytorch_lora_weights.safetensors \(unet\): 1 trained layer\(s\) not loaded, e.g. down_blocks.0\S+ff.net.0.proj"),
])
def test_a_broken_file_is_named_with_its_layer(tmp_path, tiny_model, file, edit, message):
    pipe, components = trained(tiny_model, tmp_path / "ink")
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
