"""The load check: a LoRA file that loads with "lora key not loaded" and silently does nothing is the
bug users of every trainer hate most. After train@S or merge@C writes a LoRA folder, each of its two
files is loaded back into a pipeline the way a user would load it (diffusers' `load_lora_weights`,
which reads the diffusers layout as it is and converts kohya's), as an extra adapter, and the weight
update it puts on every layer, scale * B A, is compared with what was meant: the trained adapter's
(train@S) or the merged factors' (merge@C). A layer the file leaves out, one it adds, or an update off
by more than float rounding stops the stage, naming the file and the layer.

A DoRA's kohya file cannot go through diffusers, which drops its `dora_scale` keys and loads a plain
LoRA: it is read by our reference implementation of the LyCORIS formula (stylemix.dora) instead,
against the pipeline's base weights, and every tensor in it must be used.
"""
import warnings
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file

from stylemix import dora
from stylemix.base_model import architecture
from stylemix.errors import StyleMixError
from stylemix.lora_files import kohya_name, update

CHECK = "stylemix_load_check"


def layer_delta(module: LoraLayer, adapter: str) -> torch.Tensor:
    """The update one adapter puts on a peft layer, W' - W in float32, flattened to 2-D (conv kernels
    too): scale * B A, or a DoRA's (stylemix.dora)."""
    lowrank = update(module.lora_A[adapter].weight, module.lora_B[adapter].weight, module.scaling[adapter])
    if adapter in module.lora_magnitude_vector:  # DoRA
        return dora.delta(module.get_base_layer().weight, lowrank, module.lora_magnitude_vector[adapter].weight)
    return lowrank


def deltas(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """{module: W' - W} of one adapter on every layer it adapts."""
    return {name: layer_delta(module, adapter) for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and adapter in module.lora_A}


def base_weight(model: torch.nn.Module, module: str) -> torch.Tensor:
    """A layer's base weight, under any adapters peft put on it."""
    layer = model.get_submodule(module)
    return (layer.get_base_layer() if isinstance(layer, LoraLayer) else layer).weight


def kohya_dora_deltas(path: Path, pipe, components: dict[str, list[str]]) -> dict[str, dict[str, torch.Tensor]]:
    """{component: {module: W' - W}} of a kohya-layout DoRA file by the LyCORIS formula, for the layers
    `components` names (a layer with no `dora_scale` as plain LoRA); a tensor left unread is an error."""
    state, arch, used, out = load_file(path), architecture(pipe), set(), {}
    for component, modules in components.items():
        model = getattr(pipe, component)
        out[component] = {}
        for module in modules:
            name = kohya_name(component, module, arch, pipe.unet.config.layers_per_block)
            keys = {k: f"{name}.{k}" for k in ("lora_down.weight", "lora_up.weight", "alpha", "dora_scale")}
            if not all(keys[k] in state for k in ("lora_down.weight", "lora_up.weight", "alpha")):
                continue  # compare() names it as not loaded
            down, magnitude = state[keys["lora_down.weight"]], state.get(keys["dora_scale"])
            lowrank = update(down, state[keys["lora_up.weight"]], float(state[keys["alpha"]]) / down.shape[0])
            out[component][module] = lowrank if magnitude is None else dora.delta(base_weight(model, module), lowrank, magnitude)
            used |= {v for v in keys.values() if v in state}
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


def is_dora(path: Path) -> bool:
    with safe_open(path, "pt") as f:
        return any(k.endswith(".dora_scale") for k in f.keys())


def adapter_deltas(pipe, adapter: str = "default") -> dict[str, dict[str, torch.Tensor]]:
    """{component: deltas} of a loaded adapter on every component that has one."""
    components = [c for c in ("unet", "text_encoder", "text_encoder_2") if getattr(getattr(pipe, c, None), "peft_config", None)]
    return {c: deltas(getattr(pipe, c), adapter) for c in components}


def factor_deltas(factors: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, dict[str, torch.Tensor]]:
    """{component: deltas} of {component: {module: (A, B)}} factors at scale 1."""
    return {c: {m: update(a, b, 1.0) for m, (a, b) in modules.items()} for c, modules in factors.items()}


def check_lora_files(folder: Path, files: list[str], pipe, want: dict[str, dict[str, torch.Tensor]], where: Path | str,
                     made: str = "trained") -> None:
    """Load each file of `folder` into `pipe` as an extra adapter and compare its update with `want`
    ({component: {module: delta}}) on every component there; errors name the file as in `where` (the
    folder's place once written)."""
    components = list(want)
    for file in files:
        label = f"{where}/{file}"
        if file.endswith("_kohya.safetensors") and is_dora(folder / file):
            got = kohya_dora_deltas(folder / file, pipe, {c: list(want[c]) for c in components})
            for component in components:
                compare(f"{label} ({component})", want[component], got[component], torch.finfo(torch.float32).eps, made)
            continue
        try:
            with warnings.catch_warnings():  # peft warns that the model already has an adapter: it is ours
                warnings.simplefilter("ignore")
                pipe.load_lora_weights(str(folder), weight_name=file, adapter_name=CHECK)
        except (ValueError, KeyError, RuntimeError) as err:
            raise StyleMixError(f"{label}: diffusers cannot load it ({str(err).splitlines()[0]})") from None
        try:
            for component in components:
                model = getattr(pipe, component)
                loaded = [m.lora_A[CHECK].weight.dtype for m in model.modules() if isinstance(m, LoraLayer) and CHECK in m.lora_A]
                eps = max((torch.finfo(dtype).eps for dtype in loaded), default=torch.finfo(torch.float32).eps)
                compare(f"{label} ({component})", want[component], deltas(model, CHECK), eps, made)
        finally:
            pipe.delete_adapters(CHECK)
