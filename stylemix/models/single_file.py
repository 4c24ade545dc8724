"""Single-file checkpoints: the original (CompVis / Stability) layout of SD 1.5 and SDXL that
community models, A1111 and ComfyUI use.

Reading one is diffusers' `from_single_file` (base_model.load_pipeline) with a config folder from
stylemix/configs/ (the real models' configs, no weights) or `base.config`, so nothing is fetched
from the hub. Writing one is ours: `original_state_dict` renames a diffusers pipeline's weights
into that layout for any block and layer count (diffusers' own script assumes the real models'),
for `stylemix export --fused` and for the tests that load tiny models back as single files.
"""
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from stylemix.errors import StyleMixError
from stylemix.families import SD15, SDXL
from stylemix.outputs import save_safetensors

# The real models' configs (no weights): SD 1.5's and SDXL's for their single files; FLUX.1's and SD 3.5's
# transformers, VAEs and text encoders, checked against the real weight counts on the meta device.
CONFIGS = {name: Path(__file__).parents[1] / "configs" / name
           for name in (SD15, SDXL, "flux-dev", "flux-schnell", "sd35-medium", "sd35-large")}
UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP = {SD15: "cond_stage_model.transformer.", SDXL: "conditioner.embedders.0.transformer."}  # transformers' CLIP
OPENCLIP = "conditioner.embedders.1.model."  # SDXL's second text encoder, in open_clip's names

_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
_OPENCLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                 "embeddings.position_embedding.weight": "positional_embedding",
                 "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}


def file_keys(path: Path | str) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def architecture_of(keys: list[str]) -> str:
    """SDXL's second text encoder is conditioner.embedders.1; SD 1.5 has none."""
    return SDXL if any(k.startswith(OPENCLIP) for k in keys) else SD15


def _renamed(module_and_param: str, table: dict[str, str]) -> str:
    module, _, param = module_and_param.rpartition(".")
    return f"{table.get(module, module)}.{param}"


def _unet_key(key: str, layers: int, up_with_attention: set[int]) -> str:
    step = layers + 1  # a down level's input blocks are its layers and then its downsampler
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        side, level, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        block = f"input_blocks.{1 + level * step + j}" if side == "down" else f"output_blocks.{level * step + j}"
        return f"{block}.0.{_renamed(rest, _RESNET)}" if kind == "resnets" else f"{block}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * step}.0.op.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):  # after the level's last layer
        level = int(m[1])
        return f"output_blocks.{level * step + layers}.{2 if level in up_with_attention else 1}.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_renamed(m[2], _RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    return _renamed(key, _TOP)


def _unet(unet) -> dict:
    layers = unet.config.layers_per_block
    if not isinstance(layers, int):
        raise StyleMixError(f"the UNet's layers_per_block {layers} varies per level: the single-file layout needs one count")
    state = unet.state_dict()
    up_with_attention = {int(k.split(".")[1]) for k in state if re.match(r"up_blocks\.\d+\.attentions\.", k)}
    return {UNET + _unet_key(k, layers, up_with_attention): v for k, v in state.items()}


def _vae_key(key: str, levels: int) -> str:
    # The original decoder numbers its levels from the lowest resolution up, diffusers' from the top.
    level = lambda side, i: int(i) if side == "encoder.down" else levels - 1 - int(i)  # noqa: E731
    if m := re.fullmatch(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.{level(m[1], m[2])}.block.{m[3]}.{_renamed(m[4], _VAE_RESNET)}"
    if m := re.fullmatch(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(down|up)samplers\.0\.(.+)", key):
        return f"{m[1]}.{level(m[1], m[2])}.{m[3]}sample.{m[4]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_renamed(m[3], _VAE_RESNET)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_renamed(m[2], _VAE_ATTENTION)}"
    return key.replace("conv_norm_out", "norm_out")


def _vae(vae) -> dict:
    levels = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        new = _vae_key(key, levels)
        if ".attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original's attention projections are 1x1 convolutions
        out[VAE + new] = value
    return out


def _clip(text_encoder, prefix: str) -> dict:
    # transformers >= 5.6 dropped CLIPTextModel's `text_model.` level; the file always has it.
    return {f"{prefix}text_model.{k.removeprefix('text_model.')}": v for k, v in text_encoder.state_dict().items()}


def _openclip(text_encoder) -> dict:
    """transformers' CLIPTextModelWithProjection in open_clip's names: q, k and v in one in_proj, and
    the projection as a matrix applied from the right."""
    out, qkv = {}, {}
    for key, value in text_encoder.state_dict().items():
        key = key.removeprefix("text_model.")
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif key in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[key]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key):
            out[f"transformer.resblocks.{m[1]}.{_renamed(m[2], _OPENCLIP_LAYER)}"] = value
        else:
            raise StyleMixError(f"text_encoder_2 weight {key!r} has no place in the single-file layout")
    for (layer, param), parts in qkv.items():
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return {OPENCLIP + k: v for k, v in out.items()}


def original_state_dict(pipe) -> dict[str, torch.Tensor]:
    """Every weight of an SD 1.5 or SDXL pipeline under its single-file name."""
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    state = _unet(pipe.unet) | _vae(pipe.vae) | _clip(pipe.text_encoder, CLIP[SDXL if sdxl else SD15])
    return state | (_openclip(pipe.text_encoder_2) if sdxl else {})


def save(pipe, path: Path | str, dtype: torch.dtype, metadata: dict[str, str]) -> int:
    """Write `pipe` as one single-file checkpoint (atomically); its size in bytes."""
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu() for k, v in original_state_dict(pipe).items()}
    save_safetensors(state, path, metadata)
    return Path(path).stat().st_size


def text_encoder_without_prefix(path: Path | str, prefix: str, config: Path, dtype: torch.dtype) -> CLIPTextModel:
    """Older SD 1.5 files keep CLIP's weights one level up (cond_stage_model.transformer.embeddings...),
    which diffusers' loader does not read: load them into the config's text encoder ourselves."""
    model = CLIPTextModel(CLIPTextConfig.from_pretrained(config, subfolder="text_encoder"))
    target = getattr(model, "text_model", model)
    with safe_open(str(path), "pt") as f:
        state = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix) and not k.endswith("position_ids")}
    missing, unexpected = target.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise StyleMixError(f"base.model = {str(path)!r}: its text encoder ({prefix}*) does not fit {config}/text_encoder "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}): set base.config to the model's configs")
    return model.to(dtype).eval()


def is_real_shape(pipe, arch: str) -> bool:
    """Whether the shipped configs of SD 1.5 / SDXL describe this pipeline (not a tiny or other shape)."""
    shipped = json.loads((CONFIGS[arch] / "unet" / "config.json").read_text())
    keys = ("block_out_channels", "cross_attention_dim", "layers_per_block", "transformer_layers_per_block")
    return all(json.loads(json.dumps(pipe.unet.config.get(k))) == shipped.get(k, 1) for k in keys)


def save_configs(pipe, folder: Path) -> Path:
    """The pipeline's configs without weights: what `base.config` needs for a file of another shape."""
    pipe.save_config(folder)
    for name, component in pipe.components.items():
        if hasattr(component, "save_config"):  # diffusers models and schedulers
            component.save_config(folder / name)
        elif name.startswith("text_encoder") and component is not None:
            component.config.save_pretrained(folder / name)
    return folder
