"""Drawing images from a loaded pipeline, with their settings in each PNG: what generate@M, `stylemix
draw`, the mixing lab and the tests share."""
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from PIL.PngImagePlugin import PngInfo

from stylemix import params
from stylemix.errors import StyleMixError
from stylemix.families import NAMES, architecture, is_flow

SCHEDULERS = {
    "dpmsolver++": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
    "ddim": DDIMScheduler.from_config,
    "euler": EulerDiscreteScheduler.from_config,
}


def use_sampler(pipe, name: str) -> None:
    """Put generate.scheduler's sampler in the pipeline. FLUX.1 and SD 3.5 draw with their own flow-matching
    Euler (`euler`), which keeps the model's shift (FLUX.1's by resolution)."""
    if not is_flow(pipe):
        pipe.scheduler = SCHEDULERS[name](pipe.scheduler.config)
    elif name != "euler":
        raise StyleMixError(f"generate.scheduler = {name}: {NAMES[architecture(pipe)]} draws by flow matching; "
                            "set generate.scheduler: euler (its own flow-matching Euler)")
    else:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)


def render(pipe, texts: list[str], seeds: list[int], cfg: params.Generate, base: params.Base, model: str,
           base_prompts: list[str], on_step_end=None) -> list[tuple]:
    """One image per text and seed, drawn in one batch, each with PNG text metadata (its prompt, seed,
    model and settings). Each image starts from its own seed's generator, so it is the picture drawn
    alone up to float rounding (batched kernels sum in another order). `on_step_end` is diffusers'
    callback_on_step_end (progress, cancel, strength schedules)."""
    if is_flow(pipe) and cfg.guidance_rescale:
        raise StyleMixError(f"generate.guidance_rescale: SD 1.5 / SDXL's fix for zero-terminal-SNR models; "
                            f"{NAMES[architecture(pipe)]} has no such input: set it to 0")
    rescale = {} if is_flow(pipe) else {"guidance_rescale": cfg.guidance_rescale}
    images = pipe(texts, negative_prompt=[cfg.negative_prompt] * len(texts) if cfg.negative_prompt else None,
                  num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, **rescale, height=base.resolution,
                  width=base.resolution, generator=[torch.Generator(pipe.device).manual_seed(s) for s in seeds],
                  callback_on_step_end=on_step_end).images
    return [(image, metadata(text, seed, cfg, base, model, base_prompt))
            for image, text, seed, base_prompt in zip(images, texts, seeds, base_prompts, strict=True)]


def metadata(text: str, seed: int, cfg: params.Generate, base: params.Base, model: str, base_prompt: str) -> PngInfo:
    """An image's settings as PNG text: each on its own, and A1111's `parameters` line."""
    meta = PngInfo()
    for key, value in {"prompt": text, "base_prompt": base_prompt, "negative_prompt": cfg.negative_prompt,
                       "seed": seed, "model": model, "base_model": base.model, "steps": cfg.steps,
                       "guidance_scale": cfg.guidance_scale, "scheduler": cfg.scheduler}.items():
        meta.add_text(key, str(value))
    meta.add_text("parameters", f"{text}\nNegative prompt: {cfg.negative_prompt}\nSteps: {cfg.steps}, "
                  f"Sampler: {cfg.scheduler}, CFG scale: {cfg.guidance_scale}, Seed: {seed}, "
                  f"Size: {base.resolution}x{base.resolution}, Model: {base.model}, Lora: {model}")
    return meta
