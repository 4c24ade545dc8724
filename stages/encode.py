"""encode@S: run the frozen VAE and text encoder once per style, so training never does.

Stores, per filtered image, the VAE posterior (mean and std, already multiplied by the VAE's
scaling factor) of the image and of its mirror image, and the text encoders' output for its
training caption (trigger word applied, a style's new tokens as their own ids): hidden states,
and for SDXL the pooled embedding and the time ids of its original size, crop and bucket. The empty
caption's too, for caption dropout. With tag shuffling or dropout (`tags`), also each caption's
seeded variants (`variants_` keys, one row per variant) for training to read one an epoch.
Images are encoded and stored by aspect-ratio bucket (stylemix.data.latent_cache). Training samples
latents from the stored posterior, as if it had run the VAE itself.
The style's held-out images (stylemix.training.validation) go to their own file, which training never reads.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from more_itertools import chunked
from PIL import Image

from stylemix import gpu, params
from stylemix.adapters.tokens import add_tokens
from stylemix.data import buckets, latent_cache
from stylemix.data.conditioning import VARIANTS, encode_text, text_encoders, time_ids, tokenize
from stylemix.data.latent_cache import LatentCache
from stylemix.data.prompts import tag_variants, training_captions
from stylemix.errors import StyleMixError, run_stage
from stylemix.models.base_model import SDXL, architecture, load_pipeline
from stylemix.outputs import atomic_dir, read_jsonl
from stylemix.paths import CAPTIONS, FILTERED, HELDOUT_FILE, LATENTS, LATENTS_FILE
from stylemix.progress import progress
from stylemix.training.validation import HELDOUT_KEYS, heldout_indices

BATCH = 8


def pixels(folder: Path, names: list[str], size: tuple[int, int]) -> torch.Tensor:
    arrays = []
    for name in names:
        img = Image.open(folder / name).convert("RGB")
        if img.size != size:
            raise StyleMixError(f"{folder / name} is {img.size[0]}x{img.size[1]}, not its bucket {buckets.name(size)} "
                                f"in index.jsonl; rerun `dvc repro filter@{folder.name}`")
        arrays.append(np.asarray(img))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def encode_images(vae, folder: Path, names: list[str], sizes: list[tuple[int, int]], device, label: str) -> dict[str, list]:
    """The VAE posterior of every image and its mirror image, one tensor per image, batched by bucket."""
    scale = vae.config.scaling_factor
    store: dict[str, list] = {k: [None] * len(names) for k in ("mean", "std", "mean_flipped", "std_flipped")}
    with progress(unit="images") as bar:
        task = bar.add_task(label, total=len(names))
        for size in sorted(set(sizes)):
            rows = [i for i, s in enumerate(sizes) if s == size]
            for chunk in chunked(rows, BATCH):
                batch = pixels(folder, [names[i] for i in chunk], size).to(device, vae.dtype)
                for suffix, x in (("", batch), ("_flipped", batch.flip(-1))):
                    posterior = vae.encode(x).latent_dist
                    for key, value in (("mean", posterior.mean), ("std", posterior.std)):
                        for i, row in zip(chunk, (value * scale).float().cpu()):
                            store[key + suffix][i] = row
                bar.advance(task, len(chunk))
    return store


@torch.inference_mode()
def encode_style(name: str, style: params.Style, base: params.Base, filtered: Path = FILTERED, captions: Path = CAPTIONS,
                 out: Path = LATENTS, heldout: int = 0, seed: int = 0, tags: params.Tags | None = None) -> LatentCache:
    """Encode the style's images; `heldout` of them (chosen from `seed`) go to the held-out file
    instead of the training one, which alone gets tag variants. Returns the training file, open."""
    texts = training_captions(name, style, captions)
    records = read_jsonl(filtered / name / "index.jsonl")
    names = [row["file_name"] for row in records]
    missing = [n for n in names if n not in texts]
    if missing:
        raise StyleMixError(f"style {name}: no caption for {', '.join(missing[:3])}; rerun `dvc repro caption@{name}`")
    sizes, allowed = [tuple(row["bucket"]) for row in records], buckets.sizes(base)
    if stale := next((n for n, s in zip(names, sizes) if s not in allowed), None):
        raise StyleMixError(f"style {name}: {stale} was filtered to {buckets.name(sizes[names.index(stale)])}, not a bucket "
                            f"of base.resolution / base.buckets now; rerun `dvc repro filter@{name}`")
    pipe = load_pipeline(base)
    if style.tokens:  # their ids in the cached token ids; training learns their embeddings
        add_tokens(pipe, style.tokens, name)
    device = gpu.default_device()
    vae = pipe.vae.to(device)
    if vae.dtype == torch.float16 and vae.config.force_upcast:  # SDXL's own VAE overflows in fp16
        vae.to(torch.float32)
    per_image = encode_images(vae, filtered / name, names, sizes, device, f"encode {name}")
    captions_in_order = [texts[n] for n in names]
    encoded = encode_captions(pipe, captions_in_order, names, device)
    shared = {k: v for k, v in encoded.items() if k.startswith("empty_")}
    per_image |= {k: v for k, v in encoded.items() if k not in shared}
    if tags and tags.active:
        per_image |= encode_variants(pipe, name, captions_in_order, names, tags, device)
    if architecture(pipe) == SDXL:
        per_image["time_ids"] = time_ids(records)
    held = heldout_indices(heldout, len(names), seed, name)
    meta = {"resolution": str(base.resolution), "base_model": base.model, "architecture": architecture(pipe)}
    with atomic_dir(out / name) as tmp:
        for file, rows, keys in ((LATENTS_FILE, [i for i in range(len(names)) if i not in held], list(per_image)),
                                 (HELDOUT_FILE, held, [k for k in per_image if k in HELDOUT_KEYS])):
            rows = sorted(rows, key=lambda i: (sizes[i], i))  # bucket after bucket
            groups = {buckets.name(size): {k: torch.stack([per_image[k][i] for i in rows if sizes[i] == size]) for k in keys}
                      for size in sorted({sizes[i] for i in rows})}
            latent_cache.save(tmp / file, groups, shared, [names[i] for i in rows], [captions_in_order[i] for i in rows], meta)
    return LatentCache(out / name / LATENTS_FILE)


def encode_captions(pipe, captions: list[str], names: list[str], device) -> dict[str, torch.Tensor]:
    """Token ids (for text-encoder training) and the frozen encoders' output of every caption, plus
    the empty caption's (`empty_` keys) for caption dropout."""
    limit = pipe.tokenizer.model_max_length
    too_long = [n for n, c in zip(names, captions) if len(pipe.tokenizer(c).input_ids) > limit]
    if too_long:
        print(f"warning: {len(too_long)} caption(s) exceed {limit} tokens and are cut: {', '.join(too_long[:3])}")
    ids = tokenize(pipe, captions + [""])
    encoders = [te.to(device) for te in text_encoders(pipe)]
    chunks = [encode_text(encoders, [x.to(device) for x in chunk]) for chunk in zip(*(x.split(BATCH) for x in ids.values()))]
    outputs = {"text_hidden": torch.cat([h for h, _ in chunks]).float().cpu()} | ids
    if chunks[0][1] is not None:
        outputs["text_pooled"] = torch.cat([p for _, p in chunks]).float().cpu()
    tensors = {}
    for key, value in outputs.items():
        tensors[key], tensors["empty_" + key] = value[:-1].contiguous(), value[-1:].contiguous()
    return tensors


def encode_variants(pipe, style: str, captions: list[str], names: list[str], cfg: params.Tags, device) -> dict:
    """The `variants_` tensors: every caption's cfg.variants shuffled / dropped-out variants, encoded."""
    variants, emptied = zip(*(tag_variants(c, cfg, n) for c, n in zip(captions, names)))
    if sum(emptied):
        first = next(n for n, e in zip(names, emptied) if e)
        print(f"warning: style {style}: tags.dropout = {cfg.dropout} with tags.keep_tokens = 0 left {sum(emptied)} caption "
              f"variant(s) empty (first: {first}); they keep every tag (raise keep_tokens or lower dropout)")
    flat = [v for per_image in variants for v in per_image]
    encoded = encode_captions(pipe, flat, [n for n in names for _ in range(cfg.variants)], device)
    return {VARIANTS + k: v.view(len(names), cfg.variants, *v.shape[1:]).contiguous()
            for k, v in encoded.items() if not k.startswith("empty_")}


def main() -> None:
    if len(sys.argv) != 2:
        raise StyleMixError("usage: python -m stages.encode STYLE")
    p = params.load("base", "styles", "validation", "tags")
    name = sys.argv[1]
    heldout = params.validation_split(p, name)
    cache = encode_style(name, params.style(p, name), p.base, heldout=heldout, seed=p.validation.seed, tags=p.tags)
    shapes = ", ".join(f"{b} {n}" for b, n in cache.buckets.items())
    print(f"encode {name}: {len(cache)} images (+ mirrored) to train on ({shapes}), {heldout} held out -> {LATENTS / name}/")


if __name__ == "__main__":
    run_stage(main)
