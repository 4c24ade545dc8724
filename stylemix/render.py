"""Drawing one image from a loaded pipeline, with its settings in the PNG: what generate@M, `stylemix
draw` and the tests share."""
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL.PngImagePlugin import PngInfo

from stylemix import params

SCHEDULERS = {
    "dpmsolver++": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
    "ddim": DDIMScheduler.from_config,
    "euler": EulerDiscreteScheduler.from_config,
}


def render(pipe, text: str, seed: int, cfg: params.Generate, base: params.Base, model: str, base_prompt: str,
           on_step_end=None):
    """One image, and PNG text metadata with its prompt, seed, model and settings. `on_step_end` is
    diffusers' callback_on_step_end (progress, cancel)."""
    image = pipe(text, negative_prompt=cfg.negative_prompt or None, num_inference_steps=cfg.steps,
                 guidance_scale=cfg.guidance_scale, height=base.resolution, width=base.resolution,
                 generator=torch.Generator(pipe.device).manual_seed(seed), callback_on_step_end=on_step_end).images[0]
    meta = PngInfo()
    for key, value in {"prompt": text, "base_prompt": base_prompt, "negative_prompt": cfg.negative_prompt,
                       "seed": seed, "model": model, "base_model": base.model, "steps": cfg.steps,
                       "guidance_scale": cfg.guidance_scale, "scheduler": cfg.scheduler}.items():
        meta.add_text(key, str(value))
    meta.add_text("parameters", f"{text}\nNegative prompt: {cfg.negative_prompt}\nSteps: {cfg.steps}, "
                  f"Sampler: {cfg.scheduler}, CFG scale: {cfg.guidance_scale}, Seed: {seed}, "
                  f"Size: {base.resolution}x{base.resolution}, Model: {base.model}, Lora: {model}")
    return image, meta
