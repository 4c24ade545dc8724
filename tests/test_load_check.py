"""The load check: every LoRA file train@S writes is loaded back through diffusers and must put the
trained update on every trained layer; a broken file stops the stage naming the file and layer."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from stylemix import params
from stylemix.base_model import build_tiny, load_pipeline
from stylemix.errors import StyleMixError
from stylemix.load_check import check_lora_files
from stylemix.lora_files import WEIGHTS, add_lora, save_lora

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
        check_lora_files(tmp_path / "ink", [WEIGHTS, KOHYA], pipe)  # raises on any difference
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
        check_lora_files(tmp_path / "ink", [WEIGHTS, KOHYA], pipe)
