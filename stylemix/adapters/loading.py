"""Reading LoRA folders back, and loading them into a pipeline: every drawing stage, the drawer and
the load check come here. stylemix.adapters.lora_files writes what this reads.

`load_adapter` is the one way an adapter enters a pipeline: diffusers' `load_lora_weights` for LoRA
and DoRA files, peft from the file's own config for LoHa and LoKr, which diffusers cannot read.
"""
import json
import logging
import re
import warnings
from pathlib import Path

import torch
from peft import set_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from stylemix.adapters import lycoris
from stylemix.adapters.lora_files import LYCORIS_CONFIGS, WEIGHTS, adapter_type, module_alpha
from stylemix.errors import StyleMixError
from stylemix.families import NAMES, PIPELINES, SD15, architecture

MAGNITUDE = ".lora_magnitude_vector"  # a DoRA layer's magnitude, peft's key
# The layouts diffusers' lora_state_dict hands back: `.lora.down`, `.lora_linear_layer.down`, `.lora_A`.
FACTOR_KEY = re.compile(r"^(?P<module>.+?)\.(?:lora|lora_linear_layer)?\.?(?:lora_)?(?P<kind>down|up|A|B)\.weight$")


def open_safetensors(path: Path):
    """safe_open, or one line naming the file when it is no whole safetensors file (cut short by a copy
    or a full disk, a pickle renamed .safetensors, other bytes). safetensors reads a JSON header and
    never unpickles, so a hostile file is refused, not run."""
    try:
        return safe_open(path, "pt")
    except SafetensorError as err:
        raise StyleMixError(f"{path}: not a readable safetensors file ({err}); copy it again or retrain it") from None


def file_config(path: Path, component: str = "unet") -> dict:
    """The peft config a diffusers-layout file carries for one component ({} when it has none)."""
    with open_safetensors(path) as f:
        packed = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
    return {k.removeprefix(component + "."): v for k, v in packed.items() if k.startswith(component + ".")}


def folder_type(folder: Path) -> str:
    """lora, dora, loha or lokr: what a LoRA folder's diffusers-layout file holds."""
    return adapter_type(file_config(weights_file(folder)))


def load_order(folders: dict[str, Path]) -> list[str]:
    """The order to load several adapters into one model: LoRAs (and DoRAs) first, since peft puts a
    LoHa or LoKr over a LoRA's layer but fails to put a LoRA over a LoHa's or LoKr's convolution."""
    return sorted(folders, key=lambda name: folder_type(folders[name]) in LYCORIS_CONFIGS)


def lycoris_layers(path: Path) -> tuple[str, dict, dict[str, dict[str, torch.Tensor]]]:
    """A LoHa / LoKr diffusers-layout file as (type, its UNet's peft config, {module: {param: tensor}})."""
    config = file_config(path)
    return adapter_type(config), config, lycoris.by_layer({k.removeprefix("unet."): v for k, v in load_file(path).items()})


def load_adapter(pipe, folder: Path, adapter_name: str, weight_name: str = WEIGHTS) -> None:
    """Load a LoRA folder's diffusers-layout file into the pipeline as `adapter_name`: through
    diffusers' load_lora_weights, or, for LoHa / LoKr (UNet only), which it cannot read, through peft
    from the config the file carries. Either way diffusers' set_adapters / delete_adapters / fuse_lora
    then handle it. A file whose layers this base lacks, or has in other shapes, is one line naming it."""
    path = Path(folder) / weight_name
    quiet = logging.getLogger("diffusers.loaders.peft")  # it logs the whole error, 80 lines, before raising it
    level = quiet.level
    try:
        quiet.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(record=True) as said:  # shown when it loads; a failure says it in one line
            warnings.simplefilter("always")
            if adapter_type(file_config(path)) not in LYCORIS_CONFIGS:
                pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=adapter_name)
            else:
                _load_lycoris(pipe, path, adapter_name)
        for w in said:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except (RuntimeError, ValueError, KeyError) as err:  # torch's size mismatch; peft's "target modules not found"; a kohya key without its pair
        if any(adapter_name in names for names in pipe.get_list_adapters().values()):  # loaded in part
            pipe.delete_adapters(adapter_name)
        raise unfit(path, _first_reason(err)) from None
    finally:
        quiet.setLevel(level)


def _load_lycoris(pipe, path: Path, adapter_name: str) -> None:
    kind, config, layers = lycoris_layers(path)
    if other := next((m for m in layers if m.startswith("text_encoder")), None):
        raise StyleMixError(f"{path}: {kind} on a text encoder ({other}) is not supported; retrain with lora.text_encoder: false")
    state = {f"{module}.{param}": tensor for module, tensors in layers.items() for param, tensor in tensors.items()}
    pipe.unet.add_adapter(LYCORIS_CONFIGS[kind](**config), adapter_name)
    result = set_peft_model_state_dict(pipe.unet, state, adapter_name)
    if result.unexpected_keys:
        pipe.unet.delete_adapters(adapter_name)
        raise StyleMixError(f"{path}: {len(result.unexpected_keys)} tensor(s) no layer takes, e.g. {result.unexpected_keys[0]}")


def unfit(path: Path, reason: str) -> StyleMixError:
    return StyleMixError(f"{path}: this base model has no layers it fits ({reason}); a LoRA for another model "
                         f"(SDXL on SD 1.5?) or no LoRA at all: retrain it on base.model")


def _first_reason(err: Exception) -> str:
    """The line of torch's or peft's message that names a layer: `size mismatch for ...` or the first."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("size mismatch")), lines[0] if lines else type(err).__name__)


def weights_file(folder: Path) -> Path:
    """The diffusers-layout file of a LoRA folder, or a one-line error saying how to make it."""
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise StyleMixError(f"{path} missing: train the LoRA first (`dvc repro train@{Path(folder).name}`)")
    return path


def lora_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A LoRA folder's diffusers-layout tensors and peft metadata, through its family's own loader."""
    weights_file(folder)
    pipeline = PIPELINES[read_info(folder).get("architecture", SD15)]
    out = pipeline.lora_state_dict(str(folder), return_lora_metadata=True)  # SD 1.5 / SDXL put network alphas between
    return out[0], out[-1]


def load_factors(folder: Path) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]]:
    """A LoRA folder as {"unet" | "text_encoder" | "text_encoder_2": {module: (A, B, alpha / rank)}},
    read through diffusers' own loader so any file it accepts works here."""
    path = weights_file(folder)
    state, metadata = lora_state(folder)
    factors: dict[str, dict] = {}
    for key, weight in state.items():
        prefix, rest = key.split(".", 1)
        if rest.endswith(MAGNITUDE):  # a DoRA's: load_magnitudes
            continue
        match = FACTOR_KEY.match(rest)
        if not match:
            raise StyleMixError(f"{path}: unexpected LoRA key {key!r}")
        pair = factors.setdefault(prefix, {}).setdefault(match["module"], [None, None, None])
        pair[0 if match["kind"] in ("down", "A") else 1] = weight.float()
    for prefix, modules in factors.items():
        config = {key: metadata.get(f"{prefix}.{key}") for key in ("lora_alpha", "alpha_pattern")}
        for module, pair in modules.items():
            pair[2] = module_alpha(config, module) / pair[0].shape[0]  # alpha / rank, per layer (LoCon's differ)
    return {p: {m: tuple(v) for m, v in mods.items()} for p, mods in factors.items()}


def load_magnitudes(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A DoRA folder's magnitudes, {"unet" | "text_encoder" | ...: {module: m}}; {} for a plain LoRA."""
    magnitudes: dict[str, dict] = {}
    for key, weight in lora_state(folder)[0].items():
        if key.endswith(MAGNITUDE):
            prefix, module = key.removesuffix(MAGNITUDE).split(".", 1)
            magnitudes.setdefault(prefix, {})[module] = weight.float()
    return magnitudes


def read_info(folder: Path) -> dict:
    """The `stylemix` facts stored in a LoRA folder's diffusers file, which train@S and merge@C write."""
    path = weights_file(folder)
    with open_safetensors(path) as f:
        facts = (f.metadata() or {}).get("stylemix")
    if not facts:
        raise StyleMixError(f"{path}: no stylemix facts in its metadata, so not a LoRA that train@S or merge@C wrote "
                            f"(a file from elsewhere, or rewritten without its metadata): retrain it with `dvc repro`")
    return json.loads(facts)


def read_info_for(folder: Path, pipe) -> dict:
    """read_info, refusing a LoRA made for the other architecture than the pipeline's."""
    info = read_info(folder)
    lora, base = info.get("architecture", SD15), architecture(pipe)
    if lora != base:
        raise StyleMixError(f"{folder} is a LoRA for {NAMES[lora]} and base.model is {NAMES[base]}: "
                            f"retrain it on this base (`dvc repro`) or set base.model back")
    return info
