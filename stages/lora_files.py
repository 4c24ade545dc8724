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

WEIGHTS = "pytorch_lora_weights.safetensors"
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


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
    """Write the adapter(s) of `unet` (and `text_encoder` if it has one) in both layouts."""
    unet_state = get_peft_model_state_dict(unet)
    te_state = get_peft_model_state_dict(text_encoder) if getattr(text_encoder, "peft_config", None) else {}
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(unet_state),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(te_state) if te_state else None,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=text_encoder.peft_config["default"].to_dict() if te_state else None,
    )
    # Re-save with our facts added to diffusers' metadata (tensors unchanged).
    path = folder / WEIGHTS
    with safe_open(path, "pt") as f:
        metadata = f.metadata() | {"stylemix": json.dumps(info)}
    save_file(load_file(path), path, metadata=metadata)
    alpha = unet.peft_config["default"].lora_alpha
    kohya = to_kohya(unet_state, "lora_unet_", alpha)
    # Kohya names the SD 1.5 text encoder after its original `text_model.` module path.
    te_state = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in te_state.items()}
    kohya |= to_kohya(te_state, "lora_te_", alpha)
    save_file(kohya, folder / f"{name}_kohya.safetensors", metadata={
        "ss_network_module": "networks.lora", "ss_network_dim": str(unet.peft_config["default"].r),
        "ss_network_alpha": str(alpha), "stylemix": json.dumps(info)})


def read_info(folder: Path) -> dict:
    """The `stylemix` facts stored in a LoRA folder's diffusers file."""
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise StyleMixError(f"{path} missing: train the LoRA first (`dvc repro train@{Path(folder).name}`)")
    with safe_open(path, "pt") as f:
        return json.loads(f.metadata().get("stylemix", "{}"))
