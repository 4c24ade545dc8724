"""The load check: a LoRA file that loads with "lora key not loaded" and silently does nothing is the
bug users of every trainer hate most. After train@S or merge@C writes a LoRA folder, each of its two
files is loaded back into a pipeline the way a user would load it (diffusers' `load_lora_weights`,
which reads the diffusers layout as it is and converts kohya's), as an extra adapter, and the weight
update it puts on every layer, scale * B A, is compared with what was meant: the trained adapter's
(train@S) or the merged factors' (merge@C). A layer the file leaves out, one it adds, or an update off
by more than float rounding stops the stage, naming the file and the layer.

What diffusers cannot load as written is read by our reference implementations of the formulas, as
A1111 and ComfyUI apply them, against the pipeline's base weights, and every tensor in it must be
used: a DoRA's kohya file (diffusers drops its `dora_scale` keys and loads a plain LoRA; stylemix.adapters.dora)
and LoHa / LoKr kohya files (stylemix.adapters.lycoris). Their diffusers-layout files load through peft
(stylemix.adapters.loading.load_adapter).
"""
import warnings
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.lycoris_utils import LycorisLayer
from safetensors import safe_open
from safetensors.torch import load_file

from stylemix.adapters import dora, lycoris
from stylemix.adapters.loading import load_adapter
from stylemix.adapters.lora_files import kohya_name, update
from stylemix.errors import StyleMixError
from stylemix.families import architecture, denoiser

CHECK = "stylemix_load_check"


def layer_delta(module: LoraLayer | LycorisLayer, adapter: str) -> torch.Tensor:
    """The update one adapter puts on a peft layer, W' - W in float32, flattened to 2-D (conv kernels
    too): scale * B A, a DoRA's (stylemix.adapters.dora), or a LoHa's / LoKr's (peft's own product)."""
    if isinstance(module, LycorisLayer):
        return module.get_delta_weight(adapter).float().flatten(1)
    lowrank = update(module.lora_A[adapter].weight, module.lora_B[adapter].weight, module.scaling[adapter])
    if adapter in module.lora_magnitude_vector:  # DoRA
        return dora.delta(module.get_base_layer().weight, lowrank, module.lora_magnitude_vector[adapter].weight)
    return lowrank


def has_adapter(module: torch.nn.Module, adapter: str) -> bool:
    return (isinstance(module, LoraLayer) and adapter in module.lora_A) or \
        (isinstance(module, LycorisLayer) and adapter in module._available_adapters)


def deltas(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """{module: W' - W} of one adapter on every layer it adapts."""
    return {name: layer_delta(module, adapter) for name, module in model.named_modules() if has_adapter(module, adapter)}


def base_weight(model: torch.nn.Module, module: str) -> torch.Tensor:
    """A layer's base weight, under any adapters peft put on it."""
    layer = model.get_submodule(module)
    return (layer.get_base_layer() if isinstance(layer, (LoraLayer, LycorisLayer)) else layer).weight


def kohya_deltas(path: Path, pipe, components: dict[str, list[str]]) -> dict[str, dict[str, torch.Tensor]]:
    """{component: {module: W' - W}} of a kohya-layout file by the formulas A1111 and ComfyUI apply (LoRA,
    LyCORIS's DoRA, LoHa, LoKr), for the layers `components` names; a tensor left unread is an error."""
    state, arch, used, out = load_file(path), architecture(pipe), set(), {}
    for component, modules in components.items():
        model = getattr(pipe, component)
        out[component] = {}
        for module in modules:
            name = kohya_name(component, module, arch, denoiser(pipe).config.get("layers_per_block"))
            layer = {k.removeprefix(name + "."): v for k, v in state.items() if k.startswith(name + ".")}
            if "alpha" not in layer or not ({"lora_down.weight", "lora_up.weight"} <= set(layer) or set(layer) & set(lycoris.FACTORS)):
                continue  # compare() names it as not loaded
            alpha = float(layer["alpha"])
            if "lora_down.weight" in layer:
                down, magnitude = layer["lora_down.weight"], layer.get("dora_scale")
                lowrank = update(down, layer["lora_up.weight"], alpha / down.shape[0])
                out[component][module] = lowrank if magnitude is None else dora.delta(base_weight(model, module), lowrank, magnitude)
                used |= {f"{name}.{k}" for k in ("lora_down.weight", "lora_up.weight", "alpha", "dora_scale") if k in layer}
            else:
                factors = {k: v for k, v in layer.items() if k in lycoris.FACTORS}
                try:
                    out[component][module] = lycoris.delta(factors, lycoris.kohya_scale(factors, alpha))
                except (KeyError, RuntimeError) as err:
                    raise StyleMixError(f"{path.name}: layer {name} has an incomplete or misshapen set of factors "
                                        f"({', '.join(sorted(factors))}: {err})") from None
                used |= {f"{name}.{k}" for k in [*factors, "alpha"]}
    if unused := sorted(set(state) - used):
        raise StyleMixError(f"{path.name}: {len(unused)} tensor(s) no layer reads, e.g. {unused[0]} (misnamed, or a layer never trained)")
    return out


def compare(label: str, want: dict[str, torch.Tensor], got: dict[str, torch.Tensor], eps: float, made: str = "trained") -> None:
    """One line naming the first layer that is missing, extra or off; `made`: how `want` came to be."""
    if missing := sorted(set(want) - set(got)):
        raise StyleMixError(f"{label}: {len(missing)} {made} layer(s) not loaded, e.g. {missing[0]} (its keys are missing "
                            f"or misnamed in the file)")
    if extra := sorted(set(got) - set(want)):
        raise StyleMixError(f"{label}: {len(extra)} layer(s) loaded that were never {made}, e.g. {extra[0]}")
    for module in sorted(want):
        error, size = (got[module] - want[module]).norm(), want[module].norm()
        if error > 8 * eps * size + 1e-7:  # float rounding of the stored factors, nothing more
            raise StyleMixError(f"{label}: layer {module} loads a different update than was {made} (relative error "
                                f"{error / size:.2g}; a wrong alpha or rank in the file?)")


def read_by_formula(path: Path) -> bool:
    """A kohya-layout file diffusers cannot load as written: a DoRA's, a LoHa's, a LoKr's."""
    with safe_open(path, "pt") as f:
        return any(k.endswith(".dora_scale") or k.rsplit(".", 1)[-1] in lycoris.FACTORS for k in f.keys())


def adapter_deltas(pipe, adapter: str = "default") -> dict[str, dict[str, torch.Tensor]]:
    """{component: deltas} of a loaded adapter on every component that has one."""
    components = [c for c in ("unet", "transformer", "text_encoder", "text_encoder_2")
                  if getattr(getattr(pipe, c, None), "peft_config", None)]
    return {c: deltas(getattr(pipe, c), adapter) for c in components}


def factor_deltas(factors: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, dict[str, torch.Tensor]]:
    """{component: deltas} of {component: {module: (A, B)}} factors at scale 1."""
    return {c: {m: update(a, b, 1.0) for m, (a, b) in modules.items()} for c, modules in factors.items()}


def check_fits(pipe, folder: Path) -> None:
    """Load a LoRA folder into `pipe` and take it out again: a file whose layers this base lacks (or has
    in other shapes) stops with one line naming it before anything is built from it."""
    with warnings.catch_warnings():  # peft warns that the model already has an adapter: it is ours
        warnings.simplefilter("ignore")
        load_adapter(pipe, folder, CHECK)
    drop_check(pipe)


def drop_check(pipe) -> None:
    """Delete the check's adapter; peft warns that it was the active one and makes the one before active,
    which is what the check wants."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.delete_adapters(CHECK)


def check_lora_files(folder: Path, files: list[str], pipe, want: dict[str, dict[str, torch.Tensor]], where: Path | str,
                     made: str = "trained") -> None:
    """Load each file of `folder` into `pipe` as an extra adapter and compare its update with `want`
    ({component: {module: delta}}) on every component there; errors name the file as in `where` (the
    folder's place once written)."""
    components = list(want)
    for file in files:
        label = f"{where}/{file}"
        # FLUX.1's / SD 3.5's ComfyUI copy: by the formula ComfyUI applies (diffusers reads other names for them)
        if file.endswith("_comfyui.safetensors") or (file.endswith("_kohya.safetensors") and read_by_formula(folder / file)):
            got = kohya_deltas(folder / file, pipe, {c: list(want[c]) for c in components})
            for component in components:
                compare(f"{label} ({component})", want[component], got[component], torch.finfo(torch.float32).eps, made)
            continue
        try:
            with warnings.catch_warnings():  # peft warns that the model already has an adapter: it is ours
                warnings.simplefilter("ignore")
                load_adapter(pipe, folder, CHECK, weight_name=file)
        except StyleMixError as err:  # load_adapter's line names the temporary folder; this, where the file goes
            raise StyleMixError(f"{label}: diffusers cannot load it ({err})") from None
        try:
            for component in components:
                model = getattr(pipe, component)
                loaded = [p.dtype for n, p in model.named_parameters() if f".{CHECK}" in n]
                eps = max((torch.finfo(dtype).eps for dtype in loaded), default=torch.finfo(torch.float32).eps)
                compare(f"{label} ({component})", want[component], deltas(model, CHECK), eps, made)
        finally:
            drop_check(pipe)
