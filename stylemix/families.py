"""The four model families stylemix trains, and what tells them apart.

SD 1.5 and SDXL are UNets trained to predict noise (or velocity) on a DDPM schedule; FLUX.1 and
SD 3.5 are transformers trained by flow matching. Which one a model is never is a setting: it is
read from the loaded model (`architecture`), and every stage asks that.
"""
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

SD15, SDXL, FLUX, SD3 = "sd15", "sdxl", "flux", "sd3"
FLOW = (FLUX, SD3)  # flow matching, a transformer (pipe.transformer) in place of the UNet
PIPELINES = {SD15: StableDiffusionPipeline, SDXL: StableDiffusionXLPipeline, FLUX: FluxPipeline, SD3: StableDiffusion3Pipeline}
NAMES = {SD15: "SD 1.5", SDXL: "SDXL", FLUX: "FLUX.1", SD3: "SD 3.5"}


def denoiser_name(model) -> str:
    """"unet" or "transformer": the pipeline component a LoRA on the image model goes on."""
    return "transformer" if getattr(model, "transformer", None) is not None else "unet"


def denoiser(model):
    """The pipeline's UNet or transformer (or the model itself when given one)."""
    return getattr(model, denoiser_name(model), None) or model


def architecture(model) -> str:
    """SD15, SDXL, FLUX or SD3, from a pipeline, UNet or transformer: SDXL's UNet takes the pooled text
    and time ids; FLUX's transformer packs latents into 2x2 patches of its own (patch_size 1)."""
    net = denoiser(model)
    if net is model and (arch := next((a for a, cls in PIPELINES.items() if isinstance(model, cls)), None)):
        return arch  # a pipeline loaded without its denoiser (encode@S's FLUX.1 / SD 3.5)
    if "joint_attention_dim" in net.config:
        return FLUX if "guidance_embeds" in net.config else SD3
    return SDXL if net.config.get("addition_embed_type") == "text_time" else SD15


def is_flow(model) -> bool:
    return architecture(model) in FLOW
