"""generate@M: the comparison images, one model per stage: the base, each style, each combination
(and, for a model with new concept tokens, each prompt at each token; for a style or combination,
each prompt at each of `generate.strengths`), `generate.batch_size` images at a time. A combination
with a strength schedule is drawn from its styles' LoRAs live, the schedule setting their weights at
every step; any other from its merged file.

Every model draws the same prompts with the same seeds, so the columns of a grid compare like
with like. A style's prompts carry its trigger word, a combination's all of its components'
(read from the LoRA files, so they are the words the LoRAs were trained with). Each PNG carries
its prompt, seed, model and settings in its text metadata (A1111's `parameters` line included).
"""
import sys
from itertools import groupby
from pathlib import Path

from more_itertools import chunked

from stylemix import gpu, params
from stylemix.adapters import schedules
from stylemix.adapters.loading import load_adapter, load_order, read_info, read_info_for
from stylemix.adapters.tokens import load_tokens, unload_tokens
from stylemix.data.prompts import triggered
from stylemix.drawing.render import render, use_sampler
from stylemix.errors import StyleMixError, run_stage
from stylemix.models.base_model import load_pipeline
from stylemix.outputs import atomic_dir
from stylemix.paths import COMPONENTS, IMAGES, LORAS, MERGED, STRENGTH_IMAGES, TOKEN_IMAGES, image_name, strength_image_name, token_image_name
from stylemix.progress import progress


def lora_folder(kind: str, name: str) -> Path | None:
    if kind == "base":
        return None
    return (LORAS if kind == "style" else MERGED) / name


def adapters_of(model: str, lora: Path | None) -> tuple[dict[str, Path], schedules.Mix | None]:
    """The LoRA folders a model is drawn with, by adapter name, and their mix at strength 1: a style
    or combination its own file, or, for a combination with a schedule (which no file can hold), the
    styles' LoRAs merge@C kept beside it, live, with their weights, block weights and schedules."""
    if lora is None:
        return {}, None
    info = read_info(lora)
    if not info.get("schedule"):
        return {model: lora}, schedules.Mix({model: 1.0})
    return ({style: lora / COMPONENTS / style for style in info["components"]},
            schedules.Mix(info["components"], info.get("blocks"), schedules.load(info["schedule"])))


def generate_model(pipe, model: str, lora: Path | None, cfg: params.Generate, base: params.Base, out: Path) -> int:
    """Draw every prompt x seed for one model into `out`, for a model with new tokens every prompt at
    each token (first seed) into `out`/tokens/, and for a LoRA every prompt at each other strength
    (first seed) into `out`/strengths/; returns the number of images."""
    loras, mix = adapters_of(model, lora)
    infos = {adapter: read_info_for(folder, pipe) for adapter, folder in loras.items()}
    # One LoRA places its trigger(s) itself; live styles are triggered as their merged file would be.
    words = next(iter(infos.values())) if len(infos) == 1 else {"triggers": {a: i["trigger"] for a, i in infos.items()}}
    tokens = {adapter: list(info.get("tokens") or {}) for adapter, info in infos.items()}
    for adapter in load_order(loras):
        load_adapter(pipe, loras[adapter], adapter)
        load_tokens(pipe, loras[adapter], tokens[adapter])
    use_sampler(pipe, cfg.scheduler)
    first = cfg.seeds[0]
    jobs = [(out / image_name(i, seed), prompt, prompt, seed, None, 1.0)
            for i, prompt in enumerate(cfg.prompts) for seed in cfg.seeds]
    if new_tokens := [t for names in tokens.values() for t in names]:
        (out / TOKEN_IMAGES).mkdir()
        jobs += [(out / TOKEN_IMAGES / token_image_name(k, i, first), f"{token}, {prompt}", prompt, first, token, 1.0)
                 for k, token in enumerate(new_tokens) for i, prompt in enumerate(cfg.prompts)]
    if strengths := sorted({w for w in cfg.strengths if w != 1.0}) if loras else []:
        (out / STRENGTH_IMAGES).mkdir()
        jobs += [(out / STRENGTH_IMAGES / strength_image_name(w, i, first), prompt, prompt, first, None, w)
                 for w in strengths for i, prompt in enumerate(cfg.prompts)]
    with progress(unit="images") as bar:
        task = bar.add_task(f"generate {model}", total=len(jobs))
        # A batch draws at one strength (the LoRA's scale is the model's, not an image's).
        for strength, same in groupby(jobs, key=lambda job: job[5]):
            for batch in chunked(same, cfg.batch_size):
                paths, prompts, base_prompts, seeds, tokens_of, _ = zip(*batch)
                texts = [triggered(prompt, words) if loras else prompt for prompt in prompts]
                callback = mix.scaled(strength).apply(pipe) if mix else None
                drawn = render(pipe, texts, list(seeds), cfg, base, model if strength == 1.0 else f"{model}:{strength:g}",
                               list(base_prompts), callback)
                for path, token, (image, meta) in zip(paths, tokens_of, drawn):
                    if token:
                        meta.add_text("token", token)
                    if loras:
                        meta.add_text("strength", f"{strength:g}")
                    image.save(path, pnginfo=meta)
                bar.advance(task, len(batch))
    for adapter in loras:
        pipe.delete_adapters(adapter)
        unload_tokens(pipe, tokens[adapter])
    return len(jobs)


def main() -> None:
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in ("base", "style", "combo"):
        raise StyleMixError("usage: python -m stages.generate base | style NAME | combo NAME")
    kind, name = sys.argv[1], (sys.argv[2] if len(sys.argv) == 3 else "base")
    p = params.load("base", "generate")
    lora = lora_folder(kind, name)
    if lora and not lora.is_dir():
        raise StyleMixError(f"{lora} missing: run `dvc repro {'train' if kind == 'style' else 'merge'}@{name}` first")
    pipe = load_pipeline(p.base).to(gpu.default_device())
    pipe.set_progress_bar_config(disable=True)
    with atomic_dir(IMAGES / name) as tmp:
        count = generate_model(pipe, name, lora, p.generate, p.base, tmp)
    print(f"generate {name}: {count} images in {IMAGES / name}/")


if __name__ == "__main__":
    run_stage(main)
