"""encode@S: run the frozen VAE and text encoder once per style, so training never does.

Stores, per filtered image, the VAE posterior (mean and std, already shifted and multiplied by the
VAE's factors) of the image (flattened onto white) and of its mirror image; when some images are
transparent, each image's alpha at latent resolution (`mask`, for train.masked_loss; 1 where an
image has none); and the text encoders' output for its training caption (trigger word applied, a
style's new tokens as their own ids): hidden states, and for SDXL the pooled embedding and the time
ids of its original size, crop and bucket; for FLUX.1 and SD 3.5, T5's hidden states (SD 3.5's
beside both CLIPs') and CLIP's pooled embedding, as their pipelines compute them. The empty caption's
too, for caption dropout. Captions are read up to tags.max_token_length tokens (75, or 150 / 225 in chunks: stylemix.data.conditioning);
one line says how many were longer and cut. With tag shuffling or dropout (`tags`), also each
caption's seeded variants (`variants_` keys, one row per variant) for training to read one an epoch.
Images are encoded and stored by aspect-ratio bucket (stylemix.data.latent_cache). Training samples
latents from the stored posterior, as if it had run the VAE itself.
The style's held-out images (stylemix.training.validation) go to their own file, which training never reads.
"""
import sys
from pathlib import Path

import torch

from stylemix import gpu, params
from stylemix.adapters.tokens import add_tokens
from stylemix.data import buckets, latent_cache
from stylemix.data.conditioning import CHUNK, VARIANTS
from stylemix.data.encoding import encode_captions, encode_pictures, warn_cut
from stylemix.data.latent_cache import LatentCache
from stylemix.data.prompts import tag_variants, training_captions
from stylemix.errors import StyleMixError, run_stage
from stylemix.families import NAMES, architecture, is_flow
from stylemix.models.base_model import load_pipeline
from stylemix.outputs import atomic_dir, read_jsonl
from stylemix.paths import CAPTIONS, FILTERED, HELDOUT_FILE, LATENTS, LATENTS_FILE
from stylemix.training.validation import HELDOUT_KEYS, heldout_indices


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
    pipe = load_pipeline(base, transformer=False)
    tags = tags or params.Tags()
    if is_flow(pipe) and (style.tokens or tags.max_token_length != CHUNK):
        raise StyleMixError(f"{f'styles.{name}.tokens' if style.tokens else 'tags.max_token_length'}: a setting of the CLIP text "
                            f"encoders SD 1.5 / SDXL read captions with; {NAMES[architecture(pipe)]} reads them with T5 (up to "
                            "256 / 512 tokens) and trains no text encoder: leave it out")
    if style.tokens:  # their ids in the cached token ids; training learns their embeddings
        add_tokens(pipe, style.tokens, name)
    captions_in_order = [texts[n] for n in names]
    if not is_flow(pipe):
        warn_cut(pipe, name, captions_in_order, names, tags.max_token_length)
    device = gpu.default_device()
    per_image, shared = encode_pictures(pipe, filtered / name, records, captions_in_order, device, f"encode {name}",
                                        tags.max_token_length)
    if tags.active:
        per_image |= encode_variants(pipe, name, captions_in_order, names, tags, device)
    held = heldout_indices(heldout, len(names), seed, name)
    meta = {"resolution": str(base.resolution), "base_model": base.model, "architecture": architecture(pipe),
            "max_token_length": str(tags.max_token_length)}
    with atomic_dir(out / name) as tmp:
        latent_cache.save_rows(tmp / LATENTS_FILE, per_image, shared, [i for i in range(len(names)) if i not in held], names,
                               sizes, captions_in_order, meta)
        latent_cache.save_rows(tmp / HELDOUT_FILE, {k: v for k, v in per_image.items() if k in HELDOUT_KEYS}, shared, held,
                               names, sizes, captions_in_order, meta)
    return LatentCache(out / name / LATENTS_FILE)


def encode_variants(pipe, style: str, captions: list[str], names: list[str], cfg: params.Tags, device) -> dict:
    """The `variants_` tensors: every caption's cfg.variants shuffled / dropped-out variants, encoded."""
    variants, emptied = zip(*(tag_variants(c, cfg, n) for c, n in zip(captions, names)))
    if sum(emptied):
        first = next(n for n, e in zip(names, emptied) if e)
        print(f"warning: style {style}: tags.dropout = {cfg.dropout} with tags.keep_tokens = 0 left {sum(emptied)} caption "
              f"variant(s) empty (first: {first}); they keep every tag (raise keep_tokens or lower dropout)")
    flat = [v for per_image in variants for v in per_image]
    encoded = encode_captions(pipe, flat, device, cfg.max_token_length)
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
