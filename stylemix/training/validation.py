"""Held-out validation: did a LoRA learn its style?

encode@S sets a few images of each style aside (`validation.split`, or `styles.<name>.validation_split`)
and caches them apart; train@S never sees them. Their validation loss is the plain denoising MSE at
fixed timesteps, with a fixed noise tensor per (image, timestep), on the posterior mean of their
latents and their full caption (no dropout, no flip): two evaluations differ only by the weights.
Each image counts once, whatever its bucket's size.
train@S reports it for the base (adapters off) and for the LoRA; the validate stage fills the
cross-style matrix, every LoRA on every style's held-out images.
"""
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from stylemix.data.conditioning import IDS, encode_text, unet_kwargs
from stylemix.data.latent_cache import LatentCache
from stylemix.errors import StyleMixError
from stylemix.paths import LATENTS, heldout_file
from stylemix.training.flow import predict as flow_predict

# What encode@S keeps of a held-out image: no mirror image, no tag variants (scored on its plain caption).
HELDOUT_KEYS = ("mean", "std", "text_hidden", "text_pooled", "time_ids", *IDS)


def heldout_indices(count: int, total: int, seed: int, style: str) -> list[int]:
    """Which of a style's `total` images (in file order) are held out: `count` of them, seeded."""
    if count and count >= total - 1:
        raise StyleMixError(f"style {style}: validation_split = {count} leaves {total - count} of its {total} "
                            f"images to train on; lower styles.{style}.validation_split (or validation.split)")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:count].tolist())


def load_heldout(style: str, latents: Path = LATENTS) -> LatentCache | None:
    """The style's held-out file, or None when it holds nothing out."""
    path = heldout_file(style, latents)
    held = LatentCache(path) if path.is_file() else None
    return held if held is not None and len(held) else None


@contextmanager
def adapters_off(*modules):
    """The base model: the LoRA adapters of `modules` (those that have any) switched off, then on again."""
    adapted = [m for m in modules if getattr(m, "peft_config", None)]
    for module in adapted:
        module.disable_adapters()
    try:
        yield
    finally:
        for module in adapted:
            module.enable_adapters()


def fixed_noise(shape: tuple[int, ...], seed: int, image: int, timestep: int) -> torch.Tensor:
    """The same noise for the same (image, timestep) in every evaluation, on any device."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + image * 1_009 + timestep))


@torch.no_grad()
def heldout_loss(unet, noise_scheduler, groups: list[dict[str, torch.Tensor]], timesteps: list[int], seed: int,
                 encoders: list | None = None) -> dict[str, float]:
    """{"t<timestep>": loss, ..., "mean": their mean} of `unet` on the held-out images, given as one
    tensor dict per bucket (LatentCache.groups). The text conditioning is the cached encoder output,
    or, with `encoders` (a trained text encoder or new tokens), computed from the cached token ids."""
    limit = noise_scheduler.config.num_train_timesteps
    if any(t >= limit for t in timesteps):
        raise StyleMixError(f"validation.timesteps must be below the model's {limit} training timesteps")
    device, dtype, was_training = unet.device, unet.dtype, unet.training
    flow = isinstance(noise_scheduler, FlowMatchEulerDiscreteScheduler)  # FLUX.1 / SD 3.5: at sigma = t / 1000, unshifted
    if not flow:
        v_pred = noise_scheduler.config.prediction_type == "v_prediction"
        alphas = noise_scheduler.alphas_cumprod
        noise_scheduler.alphas_cumprod = alphas.to(device)
    unet.eval()
    sums, count = {t: 0.0 for t in timesteps}, 0
    for held in groups:
        latents = held["mean"].to(device)
        if encoders is None:
            cond, pooled = held["text_hidden"].to(device, dtype), held.get("text_pooled")
        else:
            cond, pooled = encode_text(encoders, [held[k].to(device) for k in IDS[: len(encoders)]])
        times = held.get("time_ids")
        extra = {} if flow else unet_kwargs(None if pooled is None else pooled.to(device, dtype),
                                            None if times is None else times.to(device))
        for t in timesteps:
            noise = torch.stack([fixed_noise(latents.shape[1:], seed, count + i, t) for i in range(len(latents))]).to(device)
            if flow:
                sigma = torch.full((len(latents),), t / limit, device=device)
                noisy, target = (1 - sigma.view(-1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1) * noise, noise - latents
                pred = flow_predict(unet, noisy.to(dtype), sigma.to(dtype), cond.to(dtype), pooled.to(device, dtype), 1.0)
            else:
                steps = torch.full((len(latents),), t, device=device, dtype=torch.long)
                noisy = noise_scheduler.add_noise(latents, noise, steps)
                target = noise_scheduler.get_velocity(latents, noise, steps) if v_pred else noise
                pred = unet(noisy.to(dtype), steps, cond.to(dtype), **extra).sample
            sums[t] += F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)).sum().item()
        count += len(latents)
    if not flow:
        noise_scheduler.alphas_cumprod = alphas
    unet.train(was_training)
    losses = {f"t{t}": sums[t] / count for t in timesteps}
    losses["mean"] = sum(losses.values()) / len(losses)
    return losses
