"""Per-block LoRA weights: how much of a style each UNet attention block and the text encoder get,
as A1111's LoRA Block Weight extension (LBW) and diffusers' `set_adapters` scale dicts say it.

A block spec (`merge.combos.<name>.blocks.<style>`, `stylemix draw --blocks`) is one of
- groups: {text_encoder: x, down: x, mid: x, up: x}, a missing group 1; `down` and `up` may also
  go per block, diffusers' way: {block_1: x, block_2: [x per attention layer of that block]};
- an LBW vector: BASE (the text encoders) then one multiplier per attention layer of the UNet,
  down, mid, up, in order: 17 numbers for SD 1.5 and 12 for SDXL, as LBW counts them;
- the name of one of LBW's SD 1.5 presets (PRESETS).
A layer's weight is the style's weight times its multiplier. Layers outside the attention blocks
(LoRA on the ResNets) keep the style's whole weight; LBW's vectors do not name them either.
"""
import json
from pathlib import Path

from stylemix.errors import StyleMixError

# LBW's own presets: BASE, IN01 IN02 IN04 IN05 IN07 IN08, M00, OUT03 ... OUT11 of SD 1.5.
PRESETS = {
    "ALL": [1] * 17, "NONE": [0] * 17,
    "INS": [1, 1, 1, 1] + [0] * 13, "IND": [1, 0, 0, 0, 1, 1, 1] + [0] * 10, "INALL": [1] * 7 + [0] * 10,
    "MIDD": [1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1] + [0] * 5, "OUTD": [1] + [0] * 7 + [1] * 4 + [0] * 5,
    "OUTS": [1] + [0] * 11 + [1] * 5, "OUTALL": [1] + [0] * 7 + [1] * 9, "ALL0.5": [0.5] * 17,
}


def attention_layers(unet_config: dict) -> list[str]:
    """The UNet's attention layers in LBW's order (down, mid, up), by module prefix."""
    per_block = unet_config["layers_per_block"]
    down_counts = per_block if isinstance(per_block, (list, tuple)) else [per_block] * len(unet_config["down_block_types"])
    layers = [f"down_blocks.{i}.attentions.{j}" for i, kind in enumerate(unet_config["down_block_types"])
              if "CrossAttn" in kind for j in range(down_counts[i])]
    if "CrossAttn" in (unet_config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"):
        layers.append("mid_block.attentions.0")
    up_counts = list(reversed(down_counts))
    layers += [f"up_blocks.{i}.attentions.{j}" for i, kind in enumerate(unet_config["up_block_types"])
               if "CrossAttn" in kind for j in range(up_counts[i] + 1)]
    return layers


def unet_config(base_dir: Path) -> dict:
    path = Path(base_dir) / "unet" / "config.json"
    if not path.is_file():
        raise StyleMixError(f"{path} missing: block weights need the base model's UNet; run `dvc repro base`")
    return json.loads(path.read_text())


def multipliers(spec, layers: list[str], key: str) -> dict[str, float]:
    """{attention layer prefix: multiplier} plus "text_encoder", from a block spec; `key` names it in errors."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise StyleMixError(f"{key} = {spec!r}: no such LBW preset; use one of {', '.join(PRESETS)}")
        spec = PRESETS[spec]
    if not isinstance(spec, (list, dict)):
        spec = spec.model_dump()  # params.BlockGroups
    if isinstance(spec, list):
        if len(spec) != 1 + len(layers):
            raise StyleMixError(f"{key}: {len(spec)} numbers, but this UNet takes {1 + len(layers)} (BASE and its "
                                f"{len(layers)} attention layers; LBW presets are SD 1.5's 17); or give groups: "
                                f"{{text_encoder: 1, down: 1, mid: 1, up: 1}}")
        return {"text_encoder": float(spec[0])} | {layer: float(m) for layer, m in zip(layers, spec[1:])}
    out = {"text_encoder": float(spec.get("text_encoder", 1.0))}
    for layer in layers:
        group, block, index = _place(layer)
        value = spec.get(group, 1.0)
        if isinstance(value, dict):
            value = value.get(f"block_{block}", 1.0)
        if isinstance(value, list):
            count = sum(1 for other in layers if _place(other)[:2] == (group, block))
            if len(value) != count:
                raise StyleMixError(f"{key}.{group}.block_{block}: {len(value)} numbers for its {count} attention layers")
            value = value[index]
        out[layer] = float(value)
    return out


def resolve(blocks: dict, unet_config: dict, key: str) -> dict[str, dict[str, float]]:
    """{name: multipliers} for every named block spec on this UNet; `key` ("...{name}") names each in errors."""
    if not blocks:
        return {}
    if "layers_per_block" not in unet_config:
        raise StyleMixError(f"{key.format(name=next(iter(blocks)))}: block weights name the attention blocks of SD 1.5 / "
                            "SDXL's UNet, and this base is a transformer (FLUX.1 / SD 3.5); leave them out")
    layers = attention_layers(unet_config)
    return {name: multipliers(spec, layers, key.format(name=name)) for name, spec in blocks.items()}


def _place(layer: str) -> tuple[str, int, int]:
    """("down" | "mid" | "up", block, attention index) of an attention layer prefix."""
    parts = layer.split(".")
    return ("mid", 0, 0) if parts[0] == "mid_block" else (parts[0].removesuffix("_blocks"), int(parts[1]), int(parts[3]))


def module_multiplier(mults: dict[str, float], prefix: str, module: str) -> float:
    """The multiplier of one adapted module: a text encoder's (prefix text_encoder*) or its attention layer's."""
    if prefix.startswith("text_encoder"):
        return mults["text_encoder"]
    return next((m for layer, m in mults.items() if module.startswith(layer + ".")), 1.0)


def in_attention(mults: dict[str, float], module: str) -> bool:
    """Whether a UNet module lies in one of the attention layers the multipliers name."""
    return any(module.startswith(layer + ".") for layer in mults if layer != "text_encoder")


def diffusers_scales(weight: float, mults: dict[str, float], components: list[str]) -> dict:
    """The style's weight per block as diffusers' `set_adapters` takes it for one adapter."""
    unet: dict = {"down": {}, "up": {}}
    for layer, m in mults.items():
        if layer == "text_encoder":
            continue
        group, block, _ = _place(layer)
        if group == "mid":
            unet["mid"] = weight * m
        else:
            unet[group].setdefault(f"block_{block}", []).append(weight * m)
    scales = {"unet": unet}
    scales |= {c: weight * mults["text_encoder"] for c in components if c.startswith("text_encoder")}
    return scales
