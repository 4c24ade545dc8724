"""generate@M: the comparison images, one model per stage: the base, each style, each combination
(and, for a model with new concept tokens, each prompt at each token).

Every model draws the same prompts with the same seeds, so the columns of a grid compare like
with like. A style's prompts carry its trigger word, a combination's all of its components'
(read from the LoRA files, so they are the words the LoRAs were trained with). Each PNG carries
its prompt, seed, model and settings in its text metadata (A1111's `parameters` line included).
"""
import sys
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL.PngImagePlugin import PngInfo

from stages import params
from stages.base_model import default_device, load_pipeline
from stages.errors import StyleMixError, run_stage
from stages.layout import IMAGES, TOKEN_IMAGES, image_name, token_image_name
from stages.lora_files import LORAS, read_info_for
from stages.merge import MERGED
from stages.outputs import atomic_dir
from stages.progress import progress
from stages.tokens import load_tokens, unload_tokens

SCHEDULERS = {
    "dpmsolver++": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
    "ddim": DDIMScheduler.from_config,
    "euler": EulerDiscreteScheduler.from_config,
}


def triggered(prompt: str, info: dict) -> str:
    """The prompt with the LoRA's trigger word(s), placed as the style's template says."""
    triggers = list(info.get("triggers", {}).values()) or [info["trigger"]]
    template = info.get("template", "{trigger}, {caption}")
    return template.format(trigger=", ".join(triggers), caption=prompt)


def lora_folder(kind: str, name: str) -> Path | None:
    if kind == "base":
        return None
    return (LORAS if kind == "style" else MERGED) / name


def render(pipe, text: str, seed: int, cfg: params.Generate, base: params.Base, model: str, base_prompt: str):
    """One image, and PNG text metadata with its prompt, seed, model and settings."""
    image = pipe(text, negative_prompt=cfg.negative_prompt or None, num_inference_steps=cfg.steps,
                 guidance_scale=cfg.guidance_scale, height=base.resolution, width=base.resolution,
                 generator=torch.Generator(pipe.device).manual_seed(seed)).images[0]
    meta = PngInfo()
    for key, value in {"prompt": text, "base_prompt": base_prompt, "negative_prompt": cfg.negative_prompt,
                       "seed": seed, "model": model, "base_model": base.model, "steps": cfg.steps,
                       "guidance_scale": cfg.guidance_scale, "scheduler": cfg.scheduler}.items():
        meta.add_text(key, str(value))
    meta.add_text("parameters", f"{text}\nNegative prompt: {cfg.negative_prompt}\nSteps: {cfg.steps}, "
                  f"Sampler: {cfg.scheduler}, CFG scale: {cfg.guidance_scale}, Seed: {seed}, "
                  f"Size: {base.resolution}x{base.resolution}, Model: {base.model}, Lora: {model}")
    return image, meta


def generate_model(pipe, model: str, lora: Path | None, cfg: params.Generate, base: params.Base, out: Path) -> int:
    """Draw every prompt x seed for one model into `out`, and for a model with new tokens every
    prompt at each token (first seed) into `out`/tokens/; returns the number of images."""
    info = read_info_for(lora, pipe) if lora else {}
    tokens = list(info.get("tokens") or {})
    if lora:
        pipe.load_lora_weights(lora, adapter_name=model)
        pipe.set_adapters([model])
        load_tokens(pipe, lora, tokens)
    pipe.scheduler = SCHEDULERS[cfg.scheduler](pipe.scheduler.config)
    jobs = [(out / image_name(i, seed), prompt, prompt, seed, None) for i, prompt in enumerate(cfg.prompts) for seed in cfg.seeds]
    if tokens:
        (out / TOKEN_IMAGES).mkdir()
        jobs += [(out / TOKEN_IMAGES / token_image_name(k, i, cfg.seeds[0]), f"{token}, {prompt}", prompt, cfg.seeds[0], token)
                 for k, token in enumerate(tokens) for i, prompt in enumerate(cfg.prompts)]
    with progress() as bar:
        task = bar.add_task(f"generate {model}", total=len(jobs))
        for path, prompt, base_prompt, seed, token in jobs:
            text = triggered(prompt, info) if lora else prompt
            image, meta = render(pipe, text, seed, cfg, base, model, base_prompt)
            if token:
                meta.add_text("token", token)
            image.save(path, pnginfo=meta)
            bar.advance(task)
    if lora:
        pipe.delete_adapters(model)
        unload_tokens(pipe, tokens)
    return len(jobs)


def main() -> None:
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in ("base", "style", "combo"):
        raise StyleMixError("usage: python -m stages.generate base | style NAME | combo NAME")
    kind, name = sys.argv[1], (sys.argv[2] if len(sys.argv) == 3 else "base")
    p = params.load("base", "generate")
    lora = lora_folder(kind, name)
    if lora and not lora.is_dir():
        raise StyleMixError(f"{lora} missing: run `dvc repro {'train' if kind == 'style' else 'merge'}@{name}` first")
    pipe = load_pipeline(p.base.model, p.base.revision, p.base.dtype, p.base.vae).to(default_device())
    pipe.set_progress_bar_config(disable=True)
    with atomic_dir(IMAGES / name) as tmp:
        count = generate_model(pipe, name, lora, p.generate, p.base, tmp)
    print(f"generate {name}: {count} images in {IMAGES / name}/")


if __name__ == "__main__":
    run_stage(main)
