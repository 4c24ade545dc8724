"""LoRA adapters: where they go in the model, and the files they are saved as.

Every LoRA stylemix writes is a folder with
- pytorch_lora_weights.safetensors: diffusers layout with peft's rank/alpha in its metadata, so
  `pipe.load_lora_weights(folder)` applies it at the trained scale; our own facts (trigger word,
  base model, resolution, steps, params hash) ride along under the `stylemix` metadata key;
- <name>_kohya.safetensors: kohya layout (`.alpha` per layer) for A1111/ComfyUI: `lora_unet_*`
  with diffusers' module names and `lora_te_*` for SD 1.5; for SDXL `lora_unet_*` with the
  original (sgm) UNet's names kohya trains on, and `lora_te1_*` / `lora_te2_*`; a DoRA's magnitude
  as LyCORIS's `dora_scale` (diffusers drops that key from kohya files: its users take the other);
  LoHa and LoKr as LyCORIS writes them (`hada_w1_a` ..., `lokr_w1` ...; stylemix.adapters.lycoris);
  FLUX.1 / SD 3.5: <name>_comfyui.safetensors, the `transformer.<layer>` names ComfyUI maps, with
  kohya's tensor names and `.alpha` (kohya_name);
- README.md: a model card.
A LoHa or LoKr folder's diffusers-layout file holds peft's tensors and config the same way, but
diffusers' loader reads neither type: stylemix.adapters.loading.load_adapter puts it on the UNet through peft.
Reading folders back (facts, factors, types) is stylemix.adapters.loading'.
Never pickle.
"""
import json
import re
from collections import Counter
from pathlib import Path

import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig
from peft.utils import get_peft_model_state_dict
from peft.utils.other import get_pattern_key
from safetensors import safe_open
from safetensors.torch import load_file

from stylemix import params
from stylemix.adapters import dora, lycoris
from stylemix.errors import StyleMixError
from stylemix.families import FLOW, NAMES, PIPELINES, SD3, SD15, SDXL, architecture, denoiser
from stylemix.outputs import save_safetensors

WEIGHTS = "pytorch_lora_weights.safetensors"
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _matches(module_name: str, target: str) -> bool:
    return module_name == target or module_name.endswith("." + target)  # peft's rule


def update(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """A layer's LoRA update scale * B A in float32, 2-D: (out, in [* kh * kw]) for linear and conv layers."""
    return scale * (b.float().flatten(1) @ a.float().flatten(1))


CONV_TARGETS = ["conv1", "conv2"]  # the ResNets' 3x3 convolutions: kohya's conv_dim (LoCon), at lora.conv_rank


def block_preset(unet: torch.nn.Module, preset: str) -> str:
    """The attention a block preset names: attentions.1 (style) or .0 (content) of one decoder level
    with attention. SDXL: the first, up_blocks.0, as B-LoRA found. SD 1.5's shape: the second of its
    three (up_blocks.2; the tiny model's up_blocks.1), where bench/lora_targets.py finds the split on
    the demo: .1 moves the style as far as a LoRA on every block and keeps the content, .0 lowers
    the loss without moving the style; the first level's blocks learn little style."""
    levels = [i for i, kind in enumerate(unet.config["up_block_types"]) if "CrossAttn" in kind]
    level = levels[0] if architecture(unet) == SDXL or len(levels) == 1 else levels[1]
    return f"up_blocks.{level}.attentions.{params.BLOCK_PRESETS[preset]}"


def _layers(unet: torch.nn.Module) -> list[str]:
    return [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def block_layers(unet: torch.nn.Module, block: str) -> list[str]:
    """Every `all` layer of one attention block (e.g. up_blocks.1.attentions.1), by full module name."""
    return [n for n in _layers(unet) if n.startswith(block + ".") and any(_matches(n, t) for t in params.TARGET_PRESETS["all"])]


# The flow transformers' presets, by full layer name: attention (both streams, double and single blocks;
# not SD 3.5 Medium's attn2, which ComfyUI's loader does not name), attention + MLP (the layers
# ai-toolkit's FLUX LoRA trains, the single blocks' output included but not the model's final layer of
# the same name), and FLUX.1's single-stream blocks alone (ai-toolkit's `only_if_contains` example).
_ATTN = r"(single_)?transformer_blocks\.\d+\.attn\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
FLOW_PRESETS = {"attn": _ATTN,
                "all": rf"{_ATTN}|transformer_blocks\.\d+\.ff(_context)?\.net\.(0\.proj|2)|single_transformer_blocks\.\d+\.(proj_mlp|proj_out)",
                "single_blocks": r"single_transformer_blocks\.\d+\.(attn\.to_[qkv]|proj_mlp|proj_out)"}


def flow_preset(net: torch.nn.Module, preset: str) -> list[str]:
    """A FLUX.1 / SD 3.5 transformer's layers a preset names."""
    if preset not in FLOW_PRESETS:
        raise StyleMixError(f"lora.targets: {preset} names layers of SD 1.5 / SDXL's UNet; FLUX.1 and SD 3.5 take "
                            f"{', '.join(FLOW_PRESETS)} or a list of layers, e.g. [attn.to_q, attn.to_k, attn.to_v, attn.to_out.0]")
    if not (names := [n for n in _layers(net) if re.fullmatch(FLOW_PRESETS[preset], n)]):
        raise StyleMixError(f"lora.targets: {preset}: {NAMES[architecture(net)]} has no such layers; use attn or all")
    return names


def unet_targets(unet: torch.nn.Module, targets: str | list[str]) -> list[str]:
    """Resolve a target preset or list; an unknown target names the ones that exist. A block preset
    gives full module names."""
    if isinstance(targets, str) and architecture(unet) in FLOW:
        return flow_preset(unet, targets)
    if targets == "single_blocks":
        raise StyleMixError("lora.targets: single_blocks names FLUX.1's single-stream blocks, and the base is a UNet; "
                            "use attn, all, style or content")
    if isinstance(targets, str) and targets in params.BLOCK_PRESETS:
        return block_layers(unet, block_preset(unet, targets))
    names = _layers(unet)
    wanted = params.TARGET_PRESETS[targets] if isinstance(targets, str) else targets
    unknown = [t for t in wanted if not any(_matches(n, t) for n in names)]
    if unknown:
        # Show names without block indices: "to_q", "attn2.to_v", "to_out.0", "proj_in", ...
        known = sorted({".".join(p for p in n.split(".")[-2:] if not p.startswith(("transformer_blocks", "attentions"))) for n in names})
        raise StyleMixError(f"lora.targets: {', '.join(unknown)} not in the UNet; its layers include: {', '.join(known)}")
    return wanted


LYCORIS_CONFIGS = {"loha": LoHaConfig, "lokr": LoKrConfig}  # peft's LyCORIS adapters, by lora.type


def unet_lora_config(unet: torch.nn.Module, cfg: params.Lora) -> LoraConfig | LoHaConfig | LoKrConfig:
    """The UNet's adapter: `lora.targets` at rank / alpha, and with `lora.conv_rank` the ResNets'
    convolutions at conv_rank / conv_alpha (peft's rank and alpha patterns); LoRA (or DoRA), or
    LoHa / LoKr (without Tucker factors, which ComfyUI's LoKr cannot read)."""
    targets = unet_targets(unet, cfg.targets)
    conv = {}
    if cfg.conv_rank:
        targets = targets + CONV_TARGETS
        conv = {"rank_pattern": dict.fromkeys(CONV_TARGETS, cfg.conv_rank),
                "alpha_pattern": dict.fromkeys(CONV_TARGETS, cfg.conv_alpha_or_rank)}
    if cfg.type in LYCORIS_CONFIGS:
        return LYCORIS_CONFIGS[cfg.type](r=cfg.rank, alpha=cfg.alpha, target_modules=targets, **conv)
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=targets,
                      use_dora=cfg.type == "dora", **conv)


def add_lora(unet, text_encoders: list, cfg: params.Lora) -> None:
    """Add a trainable LoRA adapter to the UNet or transformer (and every text encoder when asked)."""
    if architecture(unet) in FLOW and (cfg.type in LYCORIS_CONFIGS or cfg.conv_rank):
        raise StyleMixError(f"lora.type {cfg.type} / lora.conv_rank: stylemix trains FLUX.1 and SD 3.5 with lora or dora "
                            "(their transformers have no convolutions to adapt); set lora.type: lora, conv_rank: 0")
    config = unet_lora_config(unet, cfg)
    if architecture(unet) == SDXL:  # every adapted layer needs a kohya name; fail now, not after training
        for module, _ in unet.named_modules():
            if any(_matches(module, t) for t in config.target_modules):
                sgm_name(module, unet.config.layers_per_block)
    unet.add_adapter(config)
    if cfg.text_encoder:
        for text_encoder in text_encoders:
            text_encoder.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                                target_modules=TEXT_TARGETS, use_dora=cfg.type == "dora"))


def unit_scale_config(modules: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """The peft config dict of {module: (A, B)} factors applied as they are (alpha = rank on every
    layer): the most common rank, the others by full module name, as diffusers' loader writes them."""
    ranks = {module: a.shape[0] for module, (a, _) in modules.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {module: rank for module, rank in ranks.items() if rank != r}
    config = LoraConfig(r=r, lora_alpha=r, target_modules=sorted(modules), rank_pattern=pattern, alpha_pattern=pattern).to_dict()
    config["target_modules"] = sorted(modules)  # a list in the metadata, as diffusers writes it
    return config


def module_alpha(config: dict, module: str) -> float:
    """A module's alpha under a peft config dict: its alpha pattern's, else lora_alpha (LyCORIS's: alpha)."""
    patterns = config.get("alpha_pattern") or {}
    return float(patterns.get(get_pattern_key(list(patterns), module), config.get("lora_alpha", config.get("alpha"))))


def module_rank(config: dict, module: str) -> int:
    """A module's rank under a peft config dict: its rank pattern's, else r."""
    patterns = config.get("rank_pattern") or {}
    return int(patterns.get(get_pattern_key(list(patterns), module), config["r"]))


RESNET_SGM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
MID_SGM = {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}


def sgm_name(module: str, layers_per_block: int) -> str:
    """A diffusers SDXL UNet module's name in the original (sgm) UNet: input_blocks / middle_block /
    output_blocks numbered as the original counts them (layers_per_block + 1 per level)."""
    parts = module.split(".")
    per_level = layers_per_block + 1
    if parts[0] == "mid_block" and ".".join(parts[1:3]) in MID_SGM:
        block, rest = f"middle_block.{MID_SGM['.'.join(parts[1:3])]}", parts[3:]
    elif parts[0] in ("down_blocks", "up_blocks") and len(parts) > 3 and parts[2] in ("resnets", "attentions"):
        level, kind, j = int(parts[1]), parts[2], int(parts[3])
        index = 1 + level * per_level + j if parts[0] == "down_blocks" else level * per_level + j
        block = f"{'input' if parts[0] == 'down_blocks' else 'output'}_blocks.{index}.{int(kind == 'attentions')}"
        rest = parts[4:]
    else:
        raise StyleMixError(f"lora.targets: SDXL layer {module} is outside the UNet's resnets and attentions, "
                            "which is all the kohya SDXL layout names; target attention or resnet layers")
    if "attentions" not in module and rest and rest[0] in RESNET_SGM:
        rest = RESNET_SGM[rest[0]].split(".") + rest[1:]
    return ".".join([block, *rest])


KOHYA_PREFIXES = {SD15: {"unet": "lora_unet_", "text_encoder": "lora_te_"},
                  SDXL: {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}}


def kohya_name(component: str, module: str, arch: str, layers_per_block: int | None) -> str:
    """A layer's name in the kohya layout: `lora_unet_` + the module path with underscores (SDXL: the
    sgm UNet's path), `lora_te_` (SDXL: `lora_te1_` / `lora_te2_`) + the text model's own path.
    FLUX.1 / SD 3.5: `transformer.` + the diffusers path, the name ComfyUI's LoRA loader maps for
    both families (comfy/lora.py: flux_to_diffusers, mmdit_to_diffusers), with kohya's tensor names."""
    if arch in FLOW:
        return f"{component}.{module}"
    if component == "unet":
        module = sgm_name(module, layers_per_block) if arch == SDXL else module
    elif not module.startswith("text_model."):  # kohya names the text encoders after their `text_model.` path
        module = "text_model." + module
    return KOHYA_PREFIXES[arch][component] + module.replace(".", "_")


def to_kohya(state: dict[str, torch.Tensor], config: dict, name=lambda module: module) -> dict[str, torch.Tensor]:
    """peft keys (`<module>.lora_A.weight`) to kohya's (`<name(module)>.lora_down.weight`).
    Written here because diffusers' convert_state_dict_to_kohya stores alpha = rank and names the
    SD 1.5 text encoder `lora_te1_`, both of which A1111 would misread. Convolutions keep their 4-D
    factors (down: r x in x kh x kw, up: out x r x 1 x 1). Every layer is written at lora_alpha, a
    layer of another alpha (LoCon's convolutions) with the ratio folded into lora_up: the same update
    in every loader, where diffusers' kohya loader misreads an attention layer's own alpha whenever
    it is not the file's most common one. A DoRA's magnitude becomes `dora_scale` (stylemix.adapters.dora);
    LoHa and LoKr layers keep their tensors and their own alpha (stylemix.adapters.lycoris)."""
    if adapter_type(config) in LYCORIS_CONFIGS:
        out = {}
        for module, tensors in lycoris.by_layer(state).items():
            converted = lycoris.to_kohya(tensors, module_alpha(config, module), module_rank(config, module))
            out |= {f"{name(module)}.{k}": v for k, v in converted.items()}
        return out
    out, alpha = {}, float(config["lora_alpha"])
    for key, weight in state.items():
        module, kind = key.rsplit(".lora_", 1)
        kohya = name(module)
        if kind == "magnitude_vector":
            out[f"{kohya}.dora_scale"] = dora.kohya_scale(weight, conv=weight.dim() == 4)
        elif kind.startswith("A"):
            out[f"{kohya}.lora_down.weight"] = weight.contiguous()
        else:
            out[f"{kohya}.lora_up.weight"] = (weight * (module_alpha(config, module) / alpha)).contiguous()
        out[f"{kohya}.alpha"] = torch.tensor(alpha)
    return out


def save_lora(folder: Path, name: str, pipe, info: dict, kohya_extra: dict[str, str] | None = None) -> None:
    """Write the trained adapters of the pipeline's UNet and text encoder(s) in both layouts;
    `kohya_extra`: more metadata for the kohya file (its training settings' ss_* keys)."""
    states = {}
    for component in PIPELINES[architecture(pipe)]._lora_loadable_modules:
        module = getattr(pipe, component)
        if getattr(module, "peft_config", None):
            states[component] = (get_peft_model_state_dict(module), module.peft_config["default"].to_dict())
    save_states(folder, name, states, info | {"architecture": architecture(pipe),
                                              "layers_per_block": denoiser(pipe).config.get("layers_per_block")}, kohya_extra)


def save_states(folder: Path, name: str, states: dict[str, tuple[dict, dict]], info: dict,
                kohya_extra: dict[str, str] | None = None) -> None:
    """Write peft-format LoRA state dicts ({"unet": (state, lora config dict), "text_encoder": ...,
    "text_encoder_2": ...}; FLUX.1 / SD 3.5: "transformer"); info["architecture"] says which pipeline's
    layout, and of the kohya-layout copy (FLUX.1 / SD 3.5: ComfyUI's names, kohya_name)."""
    arch = info["architecture"]
    # peft keeps target_modules as a set, which diffusers writes in the process's string-hash order:
    # sorted, the same LoRA is the same bytes in every run (and DVC reruns nothing after it).
    states = {component: (state, config | ({"target_modules": sorted(config["target_modules"])}
                                            if isinstance(config.get("target_modules"), (set, frozenset)) else {}))
              for component, (state, config) in states.items()}
    PIPELINES[arch].save_lora_weights(folder, **{
        key: value for component, (state, config) in states.items()
        # peft's own key names (`lora_A` / `lora_B`): diffusers' older names exist for attention
        # layers only, and a file mixing the two is misread. Contiguous: conv factors trained
        # channels_last are not, and safetensors refuses them.
        for key, value in ((f"{component}_lora_layers", {k: v.contiguous() for k, v in state.items()}),
                           (f"{component}_lora_adapter_metadata", config))})
    # Re-save with our facts added to diffusers' metadata (tensors unchanged).
    path = folder / WEIGHTS
    with safe_open(path, "pt") as f:
        metadata = f.metadata() | {"stylemix": json.dumps(info)}
    save_safetensors(load_file(path), path, metadata)
    kohya = {}
    for component, (state, config) in states.items():
        kohya |= to_kohya(state, config, lambda m, c=component: kohya_name(c, m, arch, info.get("layers_per_block")))
    unet_config = states["transformer" if arch in FLOW else "unet"][1]
    kind = adapter_type(unet_config)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(unet_config["r"]),
                "ss_network_alpha": str(unet_config.get("lora_alpha", unet_config.get("alpha"))), "stylemix": json.dumps(info)}
    if arch not in FLOW:
        metadata["ss_base_model_version"] = "sdxl_base_v1-0" if arch == SDXL else "sd_v1"
    args = {}
    if kind in LYCORIS_CONFIGS:  # as LyCORIS names what it trained; each conv layer has its own alpha key
        metadata["ss_network_module"], args = "lycoris.kohya", {"algo": kind} | ({"factor": "-1"} if kind == "lokr" else {})
        if conv := (unet_config.get("rank_pattern") or {}).get(CONV_TARGETS[0]):
            args |= {"conv_dim": str(conv), "conv_alpha": str(module_alpha(unet_config, CONV_TARGETS[0]))}
    elif conv := next((k for k, v in kohya.items() if k.endswith("lora_down.weight") and v.dim() == 4 and v.shape[-1] > 1), None):
        # LoCon, as kohya's network args say it (conv_alpha as written: to_kohya folds the trained one)
        args = {"conv_dim": str(kohya[conv].shape[0]), "conv_alpha": metadata["ss_network_alpha"]}
    if any(k.endswith(".dora_scale") for k in kohya):  # as LyCORIS names a DoRA it trained
        metadata["ss_network_module"], args = "lycoris.kohya", {"algo": "lora", "dora_wd": "True"} | args
    if args:
        metadata["ss_network_args"] = json.dumps(args)
    save_safetensors(kohya, folder / kohya_file(name, arch), ((kohya_extra or {}) if arch not in FLOW else {}) | metadata)
    if arch == SD3 and (second := sorted(k.removesuffix(".alpha") for k in kohya if ".attn2." in k and k.endswith(".alpha"))):
        print(f"warning: {name}: {len(second)} layer(s) of SD 3.5 Medium's second attention (attn2, e.g. {second[0]}) are in "
              f"{kohya_file(name, arch)}, and ComfyUI's SD 3 key table names none of them, so ComfyUI loads the rest; "
              "lora.targets attn.to_q (not to_q) and so on leave them out")


def adapter_type(config: dict) -> str:
    """lora, dora, loha or lokr, from a peft config dict."""
    kind = str(config.get("peft_type", "LORA")).removeprefix("PeftType.").lower()
    return "dora" if kind == "lora" and config.get("use_dora") else kind


def kohya_file(name: str, arch: str = SD15) -> str:
    """The kohya-layout file's name in a LoRA folder; FLUX.1's and SD 3.5's is ComfyUI's (kohya_name)."""
    return f"{name}_comfyui.safetensors" if arch in FLOW else f"{name}_kohya.safetensors"


def kohya_readers(arch: str) -> str:
    """Who loads that file, as the model cards say it."""
    return "ComfyUI" if arch in FLOW else "A1111 / ComfyUI"
