"""FLUX.1 and SD 3.5 single files: the transformer alone, in its makers' layout (Black Forest Labs'
flux1-dev.safetensors, Stability's sd3.5_medium.safetensors: what ComfyUI loads from
models/diffusion_models/ and kohya's trainer from --pretrained_model_name_or_path).

Reading one is diffusers' `from_single_file` with a config folder (the real models' in
stylemix/configs/, or base.config), so nothing is looked up on the hub; the VAE and text encoders,
which such a file lacks, come from base.components (the family's diffusers model). Writing one
(`original_state_dict`, `save`) is ours, for `stylemix export --fused` and the tests: diffusers
converts only the other way.
"""
import json
import re
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from stylemix.errors import StyleMixError
from stylemix.families import FLUX, SD3, architecture
from stylemix.outputs import save_safetensors

PREFIX = "model.diffusion_model."  # ComfyUI's full checkpoints; the makers' files have none
# Each family's identifying weight (diffusers' own markers, `infer_diffusers_model_type`).
MARKERS = {FLUX: "double_blocks.0.img_attn.norm.key_norm.scale", SD3: "joint_blocks.0.context_block.adaLN_modulation.1.bias"}
# The models a file can be (their configs ship in stylemix/configs/<name>): family, and the diffusers model
# the VAE and text encoders come from when base.components is not set (diffusers' defaults).
MODELS = {"flux-dev": (FLUX, "black-forest-labs/FLUX.1-dev"), "flux-schnell": (FLUX, "black-forest-labs/FLUX.1-schnell"),
          "sd35-medium": (SD3, "stabilityai/stable-diffusion-3.5-medium"),
          "sd35-large": (SD3, "stabilityai/stable-diffusion-3.5-large")}
TRANSFORMERS = {FLUX: FluxTransformer2DModel, SD3: SD3Transformer2DModel}

# diffusers weight -> (the file's weight, its part): parts of one weight are concatenated in order
# (q, k, v and FLUX's single-block MLP input are one matrix there). `B` is a block number.
_B = r"(\d+)"
_FLUX = [
    (r"time_text_embed\.timestep_embedder\.linear_([12])", lambda m: f"time_in.{_IN_OUT[m[1]]}", 0),
    (r"time_text_embed\.text_embedder\.linear_([12])", lambda m: f"vector_in.{_IN_OUT[m[1]]}", 0),
    (r"time_text_embed\.guidance_embedder\.linear_([12])", lambda m: f"guidance_in.{_IN_OUT[m[1]]}", 0),
    (r"context_embedder", "txt_in", 0), (r"x_embedder", "img_in", 0),
    (rf"transformer_blocks\.{_B}\.norm1\.linear", r"double_blocks.\1.img_mod.lin", 0),
    (rf"transformer_blocks\.{_B}\.norm1_context\.linear", r"double_blocks.\1.txt_mod.lin", 0),
    *[(rf"transformer_blocks\.{_B}\.attn\.to_{x}", r"double_blocks.\1.img_attn.qkv", i) for i, x in enumerate("qkv")],
    *[(rf"transformer_blocks\.{_B}\.attn\.add_{x}_proj", r"double_blocks.\1.txt_attn.qkv", i) for i, x in enumerate("qkv")],
    (rf"transformer_blocks\.{_B}\.attn\.norm_q", r"double_blocks.\1.img_attn.norm.query_norm", 0),
    (rf"transformer_blocks\.{_B}\.attn\.norm_k", r"double_blocks.\1.img_attn.norm.key_norm", 0),
    (rf"transformer_blocks\.{_B}\.attn\.norm_added_q", r"double_blocks.\1.txt_attn.norm.query_norm", 0),
    (rf"transformer_blocks\.{_B}\.attn\.norm_added_k", r"double_blocks.\1.txt_attn.norm.key_norm", 0),
    (rf"transformer_blocks\.{_B}\.attn\.to_out\.0", r"double_blocks.\1.img_attn.proj", 0),
    (rf"transformer_blocks\.{_B}\.attn\.to_add_out", r"double_blocks.\1.txt_attn.proj", 0),
    (rf"transformer_blocks\.{_B}\.ff\.net\.0\.proj", r"double_blocks.\1.img_mlp.0", 0),
    (rf"transformer_blocks\.{_B}\.ff\.net\.2", r"double_blocks.\1.img_mlp.2", 0),
    (rf"transformer_blocks\.{_B}\.ff_context\.net\.0\.proj", r"double_blocks.\1.txt_mlp.0", 0),
    (rf"transformer_blocks\.{_B}\.ff_context\.net\.2", r"double_blocks.\1.txt_mlp.2", 0),
    (rf"single_transformer_blocks\.{_B}\.norm\.linear", r"single_blocks.\1.modulation.lin", 0),
    *[(rf"single_transformer_blocks\.{_B}\.{x}", r"single_blocks.\1.linear1", i)
      for i, x in enumerate(["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"])],
    (rf"single_transformer_blocks\.{_B}\.attn\.norm_q", r"single_blocks.\1.norm.query_norm", 0),
    (rf"single_transformer_blocks\.{_B}\.attn\.norm_k", r"single_blocks.\1.norm.key_norm", 0),
    (rf"single_transformer_blocks\.{_B}\.proj_out", r"single_blocks.\1.linear2", 0),
    (r"proj_out", "final_layer.linear", 0), (r"norm_out\.linear", "final_layer.adaLN_modulation.1", 0),
]
_SD3 = [
    (r"pos_embed\.proj", "x_embedder.proj", 0),
    (r"time_text_embed\.timestep_embedder\.linear_([12])", lambda m: f"t_embedder.mlp.{_MLP[m[1]]}", 0),
    (r"time_text_embed\.text_embedder\.linear_([12])", lambda m: f"y_embedder.mlp.{_MLP[m[1]]}", 0),
    (r"context_embedder", "context_embedder", 0),
    *[(rf"transformer_blocks\.{_B}\.attn(2?)\.to_{x}", r"joint_blocks.\1.x_block.attn\2.qkv", i) for i, x in enumerate("qkv")],
    *[(rf"transformer_blocks\.{_B}\.attn\.add_{x}_proj", r"joint_blocks.\1.context_block.attn.qkv", i) for i, x in enumerate("qkv")],
    (rf"transformer_blocks\.{_B}\.attn(2?)\.norm_([qk])", r"joint_blocks.\1.x_block.attn\2.ln_\3", 0),
    (rf"transformer_blocks\.{_B}\.attn\.norm_added_([qk])", r"joint_blocks.\1.context_block.attn.ln_\2", 0),
    (rf"transformer_blocks\.{_B}\.attn(2?)\.to_out\.0", r"joint_blocks.\1.x_block.attn\2.proj", 0),
    (rf"transformer_blocks\.{_B}\.attn\.to_add_out", r"joint_blocks.\1.context_block.attn.proj", 0),
    (rf"transformer_blocks\.{_B}\.norm1\.linear", r"joint_blocks.\1.x_block.adaLN_modulation.1", 0),
    (rf"transformer_blocks\.{_B}\.norm1_context\.linear", r"joint_blocks.\1.context_block.adaLN_modulation.1", 0),
    (rf"transformer_blocks\.{_B}\.ff\.net\.0\.proj", r"joint_blocks.\1.x_block.mlp.fc1", 0),
    (rf"transformer_blocks\.{_B}\.ff\.net\.2", r"joint_blocks.\1.x_block.mlp.fc2", 0),
    (rf"transformer_blocks\.{_B}\.ff_context\.net\.0\.proj", r"joint_blocks.\1.context_block.mlp.fc1", 0),
    (rf"transformer_blocks\.{_B}\.ff_context\.net\.2", r"joint_blocks.\1.context_block.mlp.fc2", 0),
    (r"proj_out", "final_layer.linear", 0), (r"norm_out\.linear", "final_layer.adaLN_modulation.1", 0),
]
_IN_OUT, _MLP = {"1": "in_layer", "2": "out_layer"}, {"1": "0", "2": "2"}
_TABLES = {FLUX: _FLUX, SD3: _SD3}


def _file_name(key: str, table) -> tuple[str, int]:
    module, _, param = key.rpartition(".")
    if module == "pos_embed" and param == "pos_embed":  # SD 3.5's position table, a buffer at the top
        return "pos_embed", 0
    for pattern, target, part in table:
        if m := re.fullmatch(pattern, module):
            name = target(m) if callable(target) else m.expand(target)
            # RMS norms keep their weight as `scale` in FLUX's file
            return f"{name}.{'scale' if name.endswith('_norm') else param}", part
    raise StyleMixError(f"transformer weight {key!r} has no place in the single-file layout")


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """The makers' final modulations give shift before scale, diffusers' scale before shift."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first])


def original_state_dict(transformer, arch: str) -> dict[str, torch.Tensor]:
    """Every weight of a FLUX.1 or SD 3.5 transformer under its single-file name."""
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in transformer.state_dict().items():
        name, part = _file_name(key, _TABLES[arch])
        parts.setdefault(name, {})[part] = value
    state = {name: torch.cat([p[i] for i in sorted(p)]) for name, p in parts.items()}
    # SD 3.5's last block has only half a context block: its modulation is a final one (shift, scale).
    last = max(int(k.split(".")[1]) for k in state if k.startswith("joint_blocks.")) if arch == SD3 else None
    for name in [n for n in state if n.startswith("final_layer.adaLN") or n.startswith(f"joint_blocks.{last}.context_block.adaLN")]:
        state[name] = _swap_halves(state[name])
    return state


def model_type(keys: list[str]) -> str | None:
    """Which of MODELS a file's transformer is, or None when it holds no FLUX.1 / SD 3.5 transformer."""
    keys = {k.removeprefix(PREFIX) for k in keys}
    if MARKERS[FLUX] in keys:
        return "flux-dev" if "guidance_in.in_layer.bias" in keys else "flux-schnell"
    if MARKERS[SD3] in keys:
        if "joint_blocks.37.x_block.mlp.fc1.weight" in keys:
            return "sd35-large"
        if any(".x_block.attn2." in k for k in keys):
            return "sd35-medium"
        raise StyleMixError("an SD 3 Medium (3.0) transformer: stylemix ships the configs of SD 3.5 Medium and Large; set "
                            "base.config to a diffusers folder of SD 3 Medium")
    return None


def save(transformer, path: Path | str, dtype: torch.dtype, metadata: dict[str, str]) -> int:
    """Write a FLUX.1 / SD 3.5 transformer as one single file (atomically); its size in bytes."""
    state = original_state_dict(transformer, architecture(transformer))
    save_safetensors({k: v.to(dtype).contiguous().cpu() for k, v in state.items()}, path, metadata)
    return Path(path).stat().st_size


def real_model(transformer, configs: dict[str, Path]) -> str | None:
    """Which of MODELS the transformer is by its config (`configs`: the shipped folders by name), or None
    for another shape (the tiny models), whose configs must travel with its file."""
    mine = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    for name in MODELS:
        shipped = json.loads((configs[name] / "transformer" / "config.json").read_text())
        if all(json.loads(json.dumps(v)) == shipped.get(k, v) for k, v in mine.items()):
            return name
    return None
