"""Combining style LoRAs, with weights, into one standalone LoRA (a new style; merge@C).

Per adapted layer each style i adds dW_i = (alpha_i / r_i) B_i A_i. The methods:
- linear: h = W x + sum_i w_i dW_i x exactly, by stacking the scaled factors (rank sum r_i).
  (peft's add_weighted_adapter "linear" mixes A and B separately, which is not this sum.)
- svd:    the same sum, truncated to `rank` by SVD (exact when rank >= sum r_i).
- ties, dare_linear, dare_ties: peft's task-arithmetic merges of the dW_i, with `density`
  (DARE draws its random mask from `seed`), then brought back to `rank` by SVD.
A DoRA style (lora.type: dora) adds its full update W' - W, computed from the base weights
(stylemix.adapters.dora), and a LoHa or LoKr style its product of factors (stylemix.adapters.lycoris): neither is
low-rank, so `linear` cannot be exact with one, and such a merge is svd at linear's rank (each layer
at the sum of its styles' ranks), which the merge says as it runs. Either way the result is a LoRA.
With `blocks`, a style's weight differs per UNet attention block and for the text encoder
(stylemix.adapters.block_weights): w_i above becomes w_i * m_i(layer), baked into the merged file.
New concept tokens of the components come along unchanged. A strength schedule over the denoising
steps cannot be baked into weights: a combination with one also keeps its styles' LoRAs in
components/, which generate@C draws live (stylemix.adapters.schedules); its merged file is the mix unscheduled.
"""
import shutil
from pathlib import Path

import torch
from peft.utils import merge_utils

from stylemix import params
from stylemix.adapters import block_weights, dora, lycoris, schedules
from stylemix.adapters.load_check import base_weight, check_fits, check_lora_files, factor_deltas
from stylemix.adapters.loading import folder_type, load_factors, load_magnitudes, lycoris_layers, read_info, unfit, weights_file
from stylemix.adapters.lora_files import LYCORIS_CONFIGS, WEIGHTS, kohya_file, module_alpha, module_rank, save_states, unit_scale_config, update
from stylemix.adapters.tokens import copy_token
from stylemix.errors import StyleMixError
from stylemix.families import SD15
from stylemix.outputs import atomic_dir
from stylemix.paths import BASE_DIR, COMPONENTS, LORAS, MERGED


def _factors_of(delta: torch.Tensor, rank: int, like_a: torch.Tensor, like_b: torch.Tensor):
    """Best rank-`rank` factors (A, B) of delta, shaped like the originals (conv kernels too)."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, len(s))
    root = s[:k].sqrt()
    a, b = root[:, None] * vh[:k], u[:, :k] * root
    if k < rank:  # keep every layer at the same rank
        a, b = torch.cat([a, a.new_zeros(rank - k, a.shape[1])]), torch.cat([b, b.new_zeros(b.shape[0], rank - k)], 1)
    return a.reshape(rank, *like_a.shape[1:]), b.reshape(like_b.shape[0], rank, *like_b.shape[2:])


def merge(components: list[tuple[dict, float, dict | None]], combo: params.Combo,
          full: list[dict | None] | None = None) -> dict[str, tuple[dict, dict]]:
    """{prefix: ({module: (A, B)}, peft config dict)} of the merged LoRA, at scale alpha / rank = 1
    on every layer. Each component is (factors, weight, block multipliers or None); `full` gives a
    component's full updates ({prefix: {module: W' - W}}, a DoRA's) in place of its factors' products."""
    merged, full = {}, full or [None] * len(components)
    exact = combo.method == "linear" and not any(full)
    for prefix in sorted({p for factors, _, _ in components for p in factors}):
        parts = [(factors.get(prefix, {}), w, mults) for factors, w, mults in components]
        rank = combo.rank or max(a.shape[0] for f, _, _ in parts for a, _, _ in f.values())
        modules = {}
        for module in sorted({m for f, _, _ in parts for m in f}):
            a0, b0, _ = next(f[module] for f, _, _ in parts if module in f)
            weights = [w * block_weights.module_multiplier(mults, prefix, module) if mults else w for _, w, mults in parts]
            present = [(f[module], w) for (f, _, _), w in zip(parts, weights) if module in f]
            if exact:  # each layer at the sum of its styles' ranks (LoCon's convolutions differ)
                modules[module] = (torch.cat([a for (a, _, _), _ in present]),
                                   torch.cat([w * scale * b for (_, b, scale), w in present], dim=1))
                continue
            zero = update(a0, b0, 0.0)  # a style without this layer
            deltas = [zero if module not in f else d[prefix][module] if d else update(*f[module]) for (f, _, _), d in zip(parts, full)]
            if combo.method in ("linear", "svd"):  # linear with a DoRA: svd at linear's rank
                total = sum(w * d for w, d in zip(weights, deltas))
            else:
                torch.manual_seed(combo.seed)  # DARE's random drop mask
                merge_fn = getattr(merge_utils, combo.method)
                total = merge_fn(deltas, torch.tensor(weights), combo.density)
            layer_rank = sum(a.shape[0] for (a, _, _), _ in present) if combo.method == "linear" else rank
            modules[module] = _factors_of(total, layer_rank, a0, b0)
        merged[prefix] = (modules, unit_scale_config(modules))
    return merged


def merge_combo(name: str, combo: params.Combo, loras: Path = LORAS, out: Path = MERGED, base_dir: Path = BASE_DIR,
                check_with=None) -> dict:
    """Merge, write models/merged/<name>/, and (with a pipeline of the base model) load both files back
    into it and require the merged update on every layer (stylemix.adapters.load_check) before the folder is in place."""
    infos = {style: read_info(loras / style) for style in combo.weights}
    archs = {style: info.get("architecture", SD15) for style, info in infos.items()}
    if len(set(archs.values())) > 1:
        sides = "; ".join(f"{arch}: {', '.join(s for s, a in archs.items() if a == arch)}" for arch in sorted(set(archs.values())))
        raise StyleMixError(f"merge.combos.{name} mixes LoRAs of different model families ({sides}), which cannot be combined; "
                            f"retrain them on one base model")
    for style in combo.weights if check_with is not None else []:
        if folder_type(loras / style) not in LYCORIS_CONFIGS:  # a LoHa's or LoKr's layers: lycoris_parts checks them
            check_fits(check_with, loras / style)
    bases = {info.get("base_model") for info in infos.values()}
    if len(bases) > 1:
        raise StyleMixError(f"merge.combos.{name}: its styles were trained on different base models ({', '.join(map(str, bases))})")
    tokens = combined_tokens(name, infos)
    total = sum(combo.weights.values())
    if total > 1:
        print(f"warning: merge.combos.{name} weights sum to {total:g} > 1; styles tend to clash above 1 (the reference saw it)")
    mults = combo_multipliers(name, combo, base_dir)
    parts = {style: style_parts(loras / style, check_with, name, style) for style in combo.weights}
    components = [(parts[style][0], w, mults.get(style)) for style, w in combo.weights.items()]
    full = [parts[style][1] for style in combo.weights]
    if combo.method == "linear" and any(full):
        kinds = ", ".join(f"{s} ({parts[s][2]})" for s, f in zip(combo.weights, full) if f)
        print(f"merge.combos.{name}: {kinds}: not low-rank (a DoRA rescales the base weight, a LoHa or LoKr multiplies its "
              f"factors), so no stack of LoRA factors is the exact sum: this linear merge is svd at the sum of the styles' ranks")
    merged = merge(components, combo, full)
    states = {}
    for prefix, (modules, config) in merged.items():
        state = {f"{m}.lora_A.weight": a.contiguous() for m, (a, _) in modules.items()}
        state |= {f"{m}.lora_B.weight": b.contiguous() for m, (_, b) in modules.items()}
        states[prefix] = (state, config)
    method = "svd" if combo.method == "linear" and any(full) else combo.method  # what the file is
    net = "transformer" if "transformer" in merged else "unet"
    info = {"combo": name, "components": combo.weights, "method": method, "rank": merged[net][1]["r"],
            "triggers": {s: i.get("trigger") for s, i in infos.items()}, "base_model": bases.pop(),
            "resolution": next(iter(infos.values())).get("resolution"), "architecture": archs.popitem()[1],
            "layers_per_block": next(iter(infos.values())).get("layers_per_block"),
            "tokens": {token: phrase for token, (_, phrase) in tokens.items()}} | ({"blocks": mults} if mults else {})
    if combo.schedule:
        info["schedule"] = schedules.dump(combo.schedule)
    with atomic_dir(out / name) as tmp:
        save_states(tmp, name, states, info)
        if check_with is not None:
            check_lora_files(tmp, [WEIGHTS, kohya_file(name, info["architecture"])], check_with,
                             factor_deltas({prefix: modules for prefix, (modules, _) in merged.items()}), out / name, "merged")
        for token, (style, _) in tokens.items():
            copy_token(loras / style, tmp, token)
        for style in combo.weights if combo.schedule else []:
            shutil.copytree(loras / style, tmp / COMPONENTS / style)
    return info


def style_parts(folder: Path, pipe, name: str, style: str) -> tuple[dict, dict | None, str]:
    """A style's (factors, full updates or None) as merge() takes them, and its adapter type."""
    kind = folder_type(folder)
    if kind in LYCORIS_CONFIGS:
        return *lycoris_parts(folder, pipe, name, style), kind
    factors = load_factors(folder)
    return factors, dora_updates(folder, factors, pipe, name, style), kind


def lycoris_parts(folder: Path, pipe, name: str, style: str) -> tuple[dict, dict]:
    """A LoHa / LoKr style's full updates, and stand-in factors that carry only each layer's rank and
    shape (zero, at scale 0: the update is in the full one). The shapes are the base weights'."""
    path = weights_file(folder)
    kind, config, layers = lycoris_layers(path)
    if pipe is None:
        raise StyleMixError(f"merge.combos.{name}: {style} is a {kind}, whose layer shapes come from the base model: "
                            f"merge it with the base model loaded (`dvc repro merge@{name}`)")
    full, shapes = {}, {}
    for module, tensors in layers.items():
        try:
            weight, rank = base_weight(pipe.unet, module), module_rank(config, module)
        except AttributeError:
            raise unfit(path, f"no layer {module}") from None
        full[module] = lycoris.delta(tensors, module_alpha(config, module) / rank)
        if full[module].shape[0] != weight.shape[0] or full[module].numel() != weight.numel():  # a convolution's: flat
            raise unfit(path, f"{module} is {tuple(weight.shape)} in the base, {tuple(full[module].shape)} in the file")
        kernel = (1, 1) if weight.dim() == 4 else ()  # LoRA's up factor of a convolution: out x r x 1 x 1
        shapes[module] = (torch.zeros(rank, *weight.shape[1:]), torch.zeros(weight.shape[0], rank, *kernel), 0.0)
    return {"unet": shapes}, {"unet": full}


def dora_updates(folder: Path, factors: dict, pipe, name: str, style: str) -> dict | None:
    """A DoRA style's full updates {prefix: {module: W' - W}} on the base weights of `pipe`; None for a plain LoRA."""
    magnitudes = load_magnitudes(folder)
    if not magnitudes:
        return None
    if pipe is None:
        raise StyleMixError(f"merge.combos.{name}: {style} is a DoRA, whose update depends on the base weights: "
                            f"merge it with the base model loaded (`dvc repro merge@{name}`)")
    updates = {prefix: {module: update(*f) for module, f in modules.items()} for prefix, modules in factors.items()}
    return {prefix: {module: dora.delta(base_weight(getattr(pipe, prefix), module), lowrank, magnitudes[prefix][module])
                     if module in magnitudes.get(prefix, {}) else lowrank for module, lowrank in layers.items()}
            for prefix, layers in updates.items()}


def combined_tokens(name: str, infos: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """Every component's new tokens, {token: (style, initializer)}: a token embedding is no
    weight delta, so it comes along whole; two styles defining the same token cannot merge."""
    tokens: dict[str, tuple[str, str]] = {}
    for style, info in infos.items():
        for token, phrase in (info.get("tokens") or {}).items():
            if token in tokens:
                raise StyleMixError(f"merge.combos.{name}: styles {tokens[token][0]} and {style} both define token {token}; "
                                    f"rename it in one of them (styles.{style}.tokens) and retrain that style")
            tokens[token] = (style, phrase)
    return tokens


def combo_multipliers(name: str, combo: params.Combo, base_dir: Path = BASE_DIR) -> dict[str, dict[str, float]]:
    """{style: {layer: multiplier}} for the combination's styles with block weights."""
    if not combo.blocks:
        return {}
    return block_weights.resolve(combo.blocks, block_weights.unet_config(base_dir), f"merge.combos.{name}.blocks.{{name}}")
