"""Which noise levels a training step draws (train.timesteps): timesteps of the UNets' DDPM schedule
(SD 1.5, SDXL), and the sigmas of flow matching (FLUX.1, SD 3.5; stylemix.training.flow).

Flow sigmas are drawn by the same setting (diffusers' compute_density_for_timestep_sampling for
uniform, logit_normal and mode; earlier / later / range as for the UNets, over 1000 steps) and then
shifted toward the noisy end as the model's scheduler shifts them when drawing: SD 3.5 by its static
shift (3.0), FLUX.1 by the resolution-dependent one (mu grows with the number of latent patches), or
by train.timesteps.shift, a static shift, when it is set.
"""
import math

import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling

from stylemix import params
from stylemix.errors import StyleMixError

CONTINUOUS = {"uniform": "none", "logit_normal": "logit_normal", "mode": "mode"}  # ours -> diffusers' scheme names


def timestep_weights(cfg: params.Timesteps, total: int) -> torch.Tensor:
    """Each timestep's chance under an earlier / later / range bias (diffusers' timestep_bias_*)."""
    if cfg.sampling == "range":
        begin, end = cfg.range
        if end > total:
            raise StyleMixError(f"train.timesteps.range {list(cfg.range)} goes past the model's {total} timesteps; "
                                f"end it at {total} or below")
    else:
        n = max(1, round(total * cfg.portion))
        begin, end = (0, n) if cfg.sampling == "earlier" else (total - n, total)
    weights = torch.ones(total)
    weights[begin:end] *= cfg.multiplier
    return weights / weights.sum()


def sample_timesteps(cfg: params.Timesteps, total: int, b: int, gen: torch.Generator) -> torch.Tensor:
    """`b` training timesteps in [0, total) by train.timesteps.sampling, from `gen`."""
    device = gen.device
    if cfg.sampling == "uniform":
        return torch.randint(0, total, (b,), generator=gen, device=device)
    if cfg.sampling == "logit_normal":  # SD 3's: most draws mid-range, fewer at either end
        u = torch.sigmoid(cfg.mean + cfg.std * torch.randn(b, generator=gen, device=device))
        return (u * total).long().clamp(max=total - 1)
    if cfg.sampling == "mode":
        u = compute_density_for_timestep_sampling("mode", b, mode_scale=cfg.mode_scale, device=device, generator=gen)
        return (u.to(device) * total).long().clamp(max=total - 1)
    return torch.multinomial(timestep_weights(cfg, total).to(device), b, replacement=True, generator=gen)


def sigmas(cfg: params.Timesteps, scheduler_config, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """One sigma in (0, 1) per latent of `shape` (b, c, h, w), drawn and shifted (the module's doc)."""
    b, device = shape[0], gen.device
    if cfg.sampling in CONTINUOUS:
        u = compute_density_for_timestep_sampling(CONTINUOUS[cfg.sampling], b, cfg.mean, cfg.std, cfg.mode_scale,
                                                  device=device, generator=gen).to(device)
    else:
        u = (sample_timesteps(cfg, 1000, b, gen).float() + 0.5) / 1000
    u = u.clamp(1e-4, 1 - 1e-4)  # both ends are degenerate: nothing to denoise, or nothing left of the picture
    if cfg.shift is None and scheduler_config.get("use_dynamic_shifting"):  # FLUX.1: by the number of 2x2 patches
        c = scheduler_config
        mu = calculate_shift(shape[-2] * shape[-1] // 4, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
        return math.exp(mu) / (math.exp(mu) + (1 / u - 1))
    shift = cfg.shift if cfg.shift is not None else scheduler_config.get("shift", 1.0)
    return shift * u / (1 + (shift - 1) * u)
