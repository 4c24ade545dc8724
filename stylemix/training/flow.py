"""Flow matching, FLUX.1's and SD 3.5's objective (rectified flow, as diffusers' and kohya's trainers
train them): a picture x and noise n are mixed at sigma in (0, 1) as (1 - sigma) x + sigma n, and the
transformer predicts the velocity n - x. Sigma is drawn and shifted by train.timesteps
(stylemix.training.timesteps); the loss is weighted per sigma by train.timesteps.weighting
(diffusers' compute_loss_weighting_for_sd3: none, sigma_sqrt, cosmap).

Training reads cached captions, so the text encoders (T5-XXL: 9.5 GB in bf16) are dropped once the
validation prompts are encoded, as kohya's trainer does: that is what lets FLUX.1 train on 24 GB.
"""
import gc

import torch
from accelerate.utils import extract_model_from_parallel
from diffusers import FluxPipeline
from diffusers.training_utils import compute_loss_weighting_for_sd3

from stylemix import params
from stylemix.data.conditioning import ALL_TEXT_ENCODERS
from stylemix.data.encoding import encode_captions
from stylemix.errors import StyleMixError
from stylemix.families import FLOW, FLUX, NAMES, SD3, architecture
from stylemix.training.timesteps import sigmas


def check_settings(cfg: params.Train, arch: str) -> None:
    """Settings of the other objective mean nothing here: one line, not a silent no-op."""
    if arch in FLOW:
        wrong = {"min_snr_gamma": cfg.min_snr_gamma, "debiased_estimation": cfg.debiased_estimation}
        why = f"settings of SD 1.5 / SDXL's noise schedule, and {NAMES[arch]} trains by flow matching; set them to null / false " \
              "(train.timesteps.weighting weights its loss)"
    else:
        wrong = {"timesteps.shift": cfg.timesteps.shift, "timesteps.weighting": cfg.timesteps.weighting != "none",
                 "flux_guidance": cfg.flux_guidance != 1.0}
        why = f"settings of FLUX.1 / SD 3.5's flow matching, and the base is {NAMES[arch]}; leave them at their defaults"
    if set_keys := [f"train.{k}" for k, v in wrong.items() if v]:
        raise StyleMixError(f"{', '.join(set_keys)}: {why}")


def predict(transformer, noisy: torch.Tensor, sigma: torch.Tensor, hidden: torch.Tensor, pooled: torch.Tensor,
            guidance: float) -> torch.Tensor:
    """The transformer's velocity for (b, c, h, w) latents at `sigma`, in the latents' layout. FLUX.1's
    transformer reads 2x2 patches as tokens with their positions, and [dev] a guidance value.
    `transformer` may be wrapped (DDP, torch.compile): its config is read from the model inside."""
    net = extract_model_from_parallel(transformer)
    if architecture(net) != FLUX:
        return transformer(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=hidden,
                           pooled_projections=pooled, return_dict=False)[0]
    b, c, h, w = noisy.shape
    if h % 2 or w % 2:
        raise StyleMixError(f"FLUX.1 reads latents in 2x2 patches and got {h}x{w}: make base.resolution and base.buckets.step "
                            "multiples of 16")
    device, dtype = noisy.device, noisy.dtype
    packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
    image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
    text_ids = torch.zeros(hidden.shape[1], 3, device=device, dtype=dtype)
    extra = {"guidance": torch.full((b,), guidance, device=device, dtype=dtype)} if net.config.guidance_embeds else {}
    out = transformer(hidden_states=packed, timestep=sigma, encoder_hidden_states=hidden, pooled_projections=pooled,
                      txt_ids=text_ids, img_ids=image_ids, return_dict=False, **extra)[0]
    return FluxPipeline._unpack_latents(out, h, w, 1)  # latent sides, at scale factor 1


def loss(transformer, scheduler_config, latents: torch.Tensor, noise: torch.Tensor, hidden: torch.Tensor, pooled: torch.Tensor,
         cfg: params.Train, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-element squared error of the velocity, each latent's loss weight) at freshly drawn sigmas."""
    sigma = sigmas(cfg.timesteps, scheduler_config, latents.shape, gen).to(latents.device)
    s = sigma.view(-1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    dtype = extract_model_from_parallel(transformer).dtype
    pred = predict(transformer, noisy.to(dtype), sigma.to(dtype), hidden.to(dtype), pooled.to(dtype), cfg.flux_guidance)
    error = (pred.float() - (noise - latents).float()) ** 2
    return error, compute_loss_weighting_for_sd3(cfg.timesteps.weighting, sigma).float()


def encode_prompts(pipe, texts: list[str], device) -> dict[str, torch.Tensor]:
    """The pipeline's inputs that draw `texts` without its text encoders (encode_captions' output):
    prompt_embeds and pooled_prompt_embeds, and for SD 3.5 (which guides by a negative prompt) the empty prompt's."""
    encoded = encode_captions(pipe, texts, device)
    out = {"prompt_embeds": encoded["text_hidden"], "pooled_prompt_embeds": encoded["text_pooled"]}
    if architecture(pipe) == SD3:
        out |= {"negative_prompt_embeds": encoded["empty_text_hidden"].expand_as(out["prompt_embeds"]),
                "negative_pooled_prompt_embeds": encoded["empty_text_pooled"].expand_as(out["pooled_prompt_embeds"])}
    return out


def drop_text_encoders(pipe) -> None:
    """Free the text encoders (T5-XXL: 9.5 GB in bf16) once what training reads of them is cached."""
    for component in ALL_TEXT_ENCODERS:
        if getattr(pipe, component, None) is not None:
            setattr(pipe, component, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def draw(pipe, prompts: dict[str, torch.Tensor], resolution: int, steps: int, device) -> list:
    """One picture per encoded prompt (encode_prompts), prompt i at seed i."""
    dtype = pipe.transformer.dtype
    return [pipe(**{k: v[i:i + 1].to(device, dtype) for k, v in prompts.items()}, num_inference_steps=steps, height=resolution,
                 width=resolution, generator=torch.Generator(device).manual_seed(i)).images[0]
            for i in range(len(prompts["prompt_embeds"]))]
