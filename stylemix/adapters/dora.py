"""DoRA's weight formula, our reference implementation (lora.type: dora).

A DoRA layer keeps LoRA's factors and adds a magnitude m, one number per output channel:
    W' = m * (W + s B A) / ||W + s B A||    (the norm of each output row; kernels flattened)
which is what peft trains (the norm detached from the graph, so it is a constant of the forward)
and what LyCORIS >= 3.2 writes as `dora_scale`, shaped (out, 1) or (out, 1, 1, 1) for convolutions.
Its update W' - W rescales every row of the base weight, so it is no low-rank product: merging a
DoRA needs the base weights, and no stack of LoRA factors is its exact sum with another style.
"""
import torch


def delta(weight: torch.Tensor, update: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """W' - W for base weight W (any layout peft and LyCORIS use), the factors' update s B A
    (stylemix.adapters.lora_files.update), and magnitude m (peft's (out,) or (1, out, 1, 1), LyCORIS's
    (out, 1[, 1, 1])): 2-D (out, in [* kh * kw])."""
    w = weight.float().flatten(1)
    merged = w + update
    return magnitude.float().reshape(-1, 1) * merged / merged.norm(dim=1, keepdim=True) - w


def kohya_scale(magnitude: torch.Tensor, conv: bool) -> torch.Tensor:
    """peft's magnitude as LyCORIS's `dora_scale` (the output axis): (out, 1) or (out, 1, 1, 1)."""
    return magnitude.reshape(-1, *([1] * (3 if conv else 1))).contiguous()
