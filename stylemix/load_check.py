"""The load check: a LoRA file that loads with "lora key not loaded" and silently does nothing is the
bug users of every trainer hate most. After train@S or merge@C writes a LoRA folder, each of its two
files is loaded back into a pipeline the way a user would load it (diffusers' `load_lora_weights`,
which reads the diffusers layout as it is and converts kohya's), as an extra adapter, and the weight
update it puts on every layer, scale * B A, is compared with what was meant: the trained adapter's
(train@S) or the merged factors' (merge@C). A layer the file leaves out, one it adds, or an update off
by more than float rounding stops the stage, naming the file and the layer.
"""
import warnings
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer

from stylemix.errors import StyleMixError

CHECK = "stylemix_load_check"


def deltas(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """{module: scale * B A} of one adapter, in float32, flattened to 2-D (conv kernels too)."""
    return {name: module.scaling[adapter] * (module.lora_B[adapter].weight.float().flatten(1)
                                             @ module.lora_A[adapter].weight.float().flatten(1))
            for name, module in model.named_modules() if isinstance(module, LoraLayer) and adapter in module.lora_A}


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


def adapter_deltas(pipe, adapter: str = "default") -> dict[str, dict[str, torch.Tensor]]:
    """{component: deltas} of a loaded adapter on every component that has one."""
    components = [c for c in ("unet", "text_encoder", "text_encoder_2") if getattr(getattr(pipe, c, None), "peft_config", None)]
    return {c: deltas(getattr(pipe, c), adapter) for c in components}


def factor_deltas(factors: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, dict[str, torch.Tensor]]:
    """{component: deltas} of {component: {module: (A, B)}} factors at scale 1."""
    return {c: {m: b.float().flatten(1) @ a.float().flatten(1) for m, (a, b) in modules.items()} for c, modules in factors.items()}


def check_lora_files(folder: Path, files: list[str], pipe, want: dict[str, dict[str, torch.Tensor]], where: Path | str,
                     made: str = "trained") -> None:
    """Load each file of `folder` into `pipe` as an extra adapter and compare its update with `want`
    ({component: {module: delta}}) on every component there; errors name the file as in `where` (the
    folder's place once written)."""
    components = list(want)
    for file in files:
        label = f"{where}/{file}"
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
