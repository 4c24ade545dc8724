"""LoHa and LoKr (LyCORIS's adapters, lora.type: loha | lokr), our reference implementation of what
their kohya-layout files mean, as A1111 and ComfyUI apply them:
    LoHa: dW = s * (w1_a w1_b) * (w2_a w2_b)          (elementwise: rank up to r^2 from 4 small factors)
    LoKr: dW = s * kron(w1, w2), w1 = w1_a w1_b or full, w2 = w2_a w2_b or full (4-D for a full conv w2)
reshaped to the layer's weight (conv factors are stored flat, (r, in * kh * kw)). The scale s is
alpha / r, where r is the inner size of a decomposed factor; a LoKr layer with both factors full has
no r, and its readers apply it at s = 1 (alpha is ignored), so we bake peft's alpha / r into its w1.
peft trains these (LoHaConfig, LoKrConfig) with the same tensors under the same names, at s = alpha / r.
Neither is low-rank in LoRA's sense, so a merge takes their full updates.
"""
import torch

LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
FACTORS = LOHA + LOKR  # every factor name either type writes


def by_layer(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"module.param": tensor} as {module: {param: tensor}}: a layer's factors together."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, weight in state.items():
        module, param = key.rsplit(".", 1)
        layers.setdefault(module, {})[param] = weight
    return layers


def kohya_scale(tensors: dict[str, torch.Tensor], alpha: float) -> float:
    """A layer's scale as its kohya file states it: alpha over the inner size of its decomposed
    factor (LoKr: w2_b's if it has one, else w1_b's), 1 for a LoKr layer whose factors are both full."""
    inner = next((tensors[k].shape[0] for k in ("hada_w1_b", "lokr_w2_b", "lokr_w1_b") if k in tensors), None)
    return alpha / inner if inner else 1.0


def delta(tensors: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """dW of one layer's LoHa or LoKr tensors (named as above, without prefix), 2-D float32:
    (out, in [* kh * kw])."""
    t = {k: v.float() for k, v in tensors.items()}
    if "hada_w1_a" in t:
        return scale * (t["hada_w1_a"] @ t["hada_w1_b"].flatten(1)) * (t["hada_w2_a"] @ t["hada_w2_b"].flatten(1))
    w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
    w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"].flatten(1)
    if w2.dim() == 4:  # a full conv factor keeps its kernel: the product is (out, in, kh, kw)
        w1 = w1[:, :, None, None]
    return scale * torch.kron(w1, w2).flatten(1)


def to_kohya(tensors: dict[str, torch.Tensor], alpha: float, rank: int) -> dict[str, torch.Tensor]:
    """A peft layer's LoHa / LoKr tensors (trained at alpha / rank) as its kohya keys, with `alpha`:
    the same update in every reader (a LoKr layer of two full factors gets alpha / rank baked into w1)."""
    out = {k: v.contiguous() for k, v in tensors.items()}
    if "lokr_w1" in out and "lokr_w2" in out:
        out["lokr_w1"] = (out["lokr_w1"] * (alpha / rank)).contiguous()
        alpha = float(rank)  # read as scale 1 anyway; rank is what LyCORIS writes for such a layer
    return out | {"alpha": torch.tensor(float(alpha))}
