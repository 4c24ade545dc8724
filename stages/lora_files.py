"""LoRA adapters: where they go in the model, and the files they are saved as.

Every LoRA stylemix writes is a folder with
- pytorch_lora_weights.safetensors: diffusers layout with peft's rank/alpha in its metadata, so
  `pipe.load_lora_weights(folder)` applies it at the trained scale; our own facts (trigger word,
  base model, resolution, steps, params hash) ride along under the `stylemix` metadata key;
- <name>_kohya.safetensors: kohya layout (`lora_unet_*`, `lora_te_*`, `.alpha`) for A1111/ComfyUI;
- README.md: a model card.
Never pickle.
"""
import json
import re
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stages import params
from stages.errors import StyleMixError

LORAS = Path("models/lora")  # train@S writes models/lora/<style>/
WEIGHTS = "pytorch_lora_weights.safetensors"
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# The layouts diffusers' lora_state_dict hands back: `.lora.down`, `.lora_linear_layer.down`, `.lora_A`.
FACTOR_KEY = re.compile(r"^(?P<module>.+?)\.(?:lora|lora_linear_layer)?\.?(?:lora_)?(?P<kind>down|up|A|B)\.weight$")


def _matches(module_name: str, target: str) -> bool:
    return module_name == target or module_name.endswith("." + target)  # peft's rule


def unet_targets(unet: torch.nn.Module, targets: str | list[str]) -> list[str]:
    """Resolve a target preset or list; an unknown target names the ones that exist."""
    wanted = params.TARGET_PRESETS[targets] if isinstance(targets, str) else targets
    names = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    unknown = [t for t in wanted if not any(_matches(n, t) for n in names)]
    if unknown:
        # Show names without block indices: "to_q", "attn2.to_v", "to_out.0", "proj_in", ...
        known = sorted({".".join(p for p in n.split(".")[-2:] if not p.startswith(("transformer_blocks", "attentions"))) for n in names})
        raise StyleMixError(f"lora.targets: {', '.join(unknown)} not in the UNet; its layers include: {', '.join(known)}")
    return wanted


def add_lora(unet, text_encoder, cfg: params.Lora) -> None:
    """Add a trainable LoRA adapter to the UNet (and the text encoder when asked)."""
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                target_modules=unet_targets(unet, cfg.targets)))
    if cfg.text_encoder:
        text_encoder.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                            target_modules=TEXT_TARGETS))


def to_kohya(state: dict[str, torch.Tensor], prefix: str, alpha: float) -> dict[str, torch.Tensor]:
    """peft keys (`<module>.lora_A.weight`) to kohya's (`<prefix><module_with_underscores>.lora_down.weight`).
    Written here because diffusers' convert_state_dict_to_kohya stores alpha = rank and names the
    SD 1.5 text encoder `lora_te1_`, both of which A1111 would misread."""
    out = {}
    for key, weight in state.items():
        module, kind = key.rsplit(".lora_", 1)
        name = prefix + module.replace(".", "_")
        out[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = weight.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def save_lora(folder: Path, name: str, unet, text_encoder, info: dict) -> None:
    """Write the trained adapter(s) of `unet` (and `text_encoder` if it has one) in both layouts."""
    states = {"unet": (get_peft_model_state_dict(unet), unet.peft_config["default"].to_dict())}
    if getattr(text_encoder, "peft_config", None):
        states["text_encoder"] = (get_peft_model_state_dict(text_encoder), text_encoder.peft_config["default"].to_dict())
    save_states(folder, name, states, info)


def save_states(folder: Path, name: str, states: dict[str, tuple[dict, dict]], info: dict) -> None:
    """Write peft-format LoRA state dicts ({"unet": (state, lora config dict), "text_encoder": ...})."""
    unet_state, unet_config = states["unet"]
    te_state, te_config = states.get("text_encoder", ({}, None))
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(unet_state),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(te_state) if te_state else None,
        unet_lora_adapter_metadata=unet_config,
        text_encoder_lora_adapter_metadata=te_config,
    )
    # Re-save with our facts added to diffusers' metadata (tensors unchanged).
    path = folder / WEIGHTS
    with safe_open(path, "pt") as f:
        metadata = f.metadata() | {"stylemix": json.dumps(info)}
    save_file(load_file(path), path, metadata=metadata)
    alpha, rank = unet_config["lora_alpha"], unet_config["r"]
    kohya = to_kohya(unet_state, "lora_unet_", alpha)
    # Kohya names the SD 1.5 text encoder after its original `text_model.` module path.
    te_state = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in te_state.items()}
    kohya |= to_kohya(te_state, "lora_te_", te_config["lora_alpha"] if te_config else alpha)
    save_file(kohya, folder / f"{name}_kohya.safetensors", metadata={
        "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
        "stylemix": json.dumps(info)})


def weights_file(folder: Path) -> Path:
    """The diffusers-layout file of a LoRA folder, or a one-line error saying how to make it."""
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise StyleMixError(f"{path} missing: train the LoRA first (`dvc repro train@{Path(folder).name}`)")
    return path


def load_factors(folder: Path) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]]:
    """A LoRA folder as {"unet" | "text_encoder": {module: (A, B, alpha / rank)}}, read through
    diffusers' own loader so any file it accepts works here."""
    path = weights_file(folder)
    state, _, metadata = StableDiffusionPipeline.lora_state_dict(str(folder), return_lora_metadata=True)
    factors: dict[str, dict] = {}
    for key, weight in state.items():
        prefix, rest = key.split(".", 1)
        match = FACTOR_KEY.match(rest)
        if not match:
            raise StyleMixError(f"{path}: unexpected LoRA key {key!r}")
        pair = factors.setdefault(prefix, {}).setdefault(match["module"], [None, None, None])
        pair[0 if match["kind"] in ("down", "A") else 1] = weight.float()
    for prefix, modules in factors.items():
        alpha, rank = metadata[f"{prefix}.lora_alpha"], metadata[f"{prefix}.r"]
        for pair in modules.values():
            pair[2] = alpha / rank
    return {p: {m: tuple(v) for m, v in mods.items()} for p, mods in factors.items()}


def read_info(folder: Path) -> dict:
    """The `stylemix` facts stored in a LoRA folder's diffusers file."""
    path = weights_file(folder)
    with safe_open(path, "pt") as f:
        return json.loads(f.metadata().get("stylemix", "{}"))
