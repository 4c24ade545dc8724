"""The scores: CLIP score and style similarity of generated images, per image and per model.

- CLIP score of an image: cosine between its CLIP image embedding and the embedding of its prompt
  without trigger words (CLIP does not know `omstyle`).
- Style similarity of an image to style s: cosine between its embedding and the normalized mean
  of the normalized embeddings of s's filtered training images. Every model is scored against
  every style, so a LoRA's gain over the base model shows.
Per model: the mean and a 95% bootstrap interval. The offline demo scores with a small open_clip
model trained on the demo data only (`local-dir:stylemix/pretrained/tiny-clip`, its config says
so); with neither pretrained weights nor such a folder the scorer is randomly initialised, the
numbers mean nothing, and metrics.json says so (`scorer_pretrained: false`).
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from more_itertools import chunked
from PIL import Image

from stylemix import gpu, params
from stylemix.errors import StyleMixError
from stylemix.images import image_files, load_rgb
from stylemix.paths import FILTERED, IMAGES


def load_scorer(cfg: params.Score):
    import open_clip

    torch.manual_seed(0)  # an untrained scorer (offline demo) must be the same network in every run
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(cfg.clip_model, pretrained=cfg.clip_pretrained)
    except (RuntimeError, OSError, ValueError) as err:
        raise StyleMixError(f"score.clip_model = {cfg.clip_model!r} / score.clip_pretrained = {cfg.clip_pretrained!r}: "
                            f"cannot load ({str(err).splitlines()[0]}); offline, use a local weights file or null") from None
    return model.eval().to(gpu.default_device()), preprocess, open_clip.get_tokenizer(cfg.clip_model)


@torch.inference_mode()
def embed_images(scorer, images: list[Image.Image], batch: int = 32) -> torch.Tensor:
    model, preprocess, _ = scorer
    device = next(model.parameters()).device
    out = [model.encode_image(torch.stack([preprocess(im) for im in chunk]).to(device)).float() for chunk in chunked(images, batch)]
    return torch.nn.functional.normalize(torch.cat(out), dim=-1).cpu()


@torch.inference_mode()
def embed_texts(scorer, texts: list[str]) -> torch.Tensor:
    model, _, tokenizer = scorer
    device = next(model.parameters()).device
    return torch.nn.functional.normalize(model.encode_text(tokenizer(texts).to(device)).float(), dim=-1).cpu()


def style_reference(scorer, folder: Path) -> torch.Tensor:
    """The normalized mean embedding of a style's training images."""
    images = [load_rgb(p) for p in image_files(folder)]
    if not images:
        raise StyleMixError(f"{folder}: no training images to compare styles with; run `dvc repro filter@{folder.name}`")
    return torch.nn.functional.normalize(embed_images(scorer, images).mean(0), dim=0)


def bootstrap(values, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean and 95% percentile-bootstrap interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    means = np.random.default_rng(seed).choice(values, size=(n, len(values))).mean(axis=1)
    return {"mean": float(values.mean()), "ci_low": float(np.percentile(means, 2.5)),
            "ci_high": float(np.percentile(means, 97.5))}


def score_images(scorer, models: list[str], styles: list[str], images: Path = IMAGES,
                 filtered: Path = FILTERED) -> tuple[pd.DataFrame, torch.Tensor]:
    """One row per generated image: model, prompt, seed, clip_score, and sim_<style> per style; and
    the images' embeddings, row for row."""
    refs = torch.stack([style_reference(scorer, filtered / s) for s in styles])
    rows, embeddings = [], []
    for model in models:
        files = image_files(images / model)
        if not files:
            raise StyleMixError(f"{images / model}: no images; run `dvc repro` for its generate stage")
        pics = [Image.open(f) for f in files]
        prompts = [im.text.get("base_prompt", "") for im in pics]
        emb = embed_images(scorer, [im.convert("RGB") for im in pics])
        embeddings.append(emb)
        clip = (emb * embed_texts(scorer, prompts)).sum(-1)
        sims = emb @ refs.T
        for i, f in enumerate(files):
            rows.append({"model": model, "file": f.name, "prompt": prompts[i], "seed": int(pics[i].text.get("seed", -1)),
                         "clip_score": float(clip[i])} | {f"sim_{s}": float(sims[i, j]) for j, s in enumerate(styles)})
    return pd.DataFrame(rows), torch.cat(embeddings)


def describe(cfg: params.Score) -> dict:
    """What the scorer is: its names, whether it has trained weights, and what its folder's config
    says about it (the demo scorer says it knows only the demo data)."""
    from open_clip.factory import parse_model_name  # open_clip's own reading of local-dir: / hf-hub: names

    schema, where = parse_model_name(cfg.clip_model)
    about = None
    if schema == "local-dir" and (config := Path(where) / "open_clip_config.json").is_file():
        about = json.loads(config.read_text()).get("about")
    return {"clip_model": cfg.clip_model, "clip_pretrained": cfg.clip_pretrained,
            "scorer_pretrained": cfg.clip_pretrained is not None or schema is not None, "about": about}


def summarize(scores: pd.DataFrame, styles: list[str], cfg: params.Score) -> dict:
    per_model = {}
    for model, group in scores.groupby("model", sort=False):
        per_model[model] = {"clip_score": bootstrap(group["clip_score"]),
                            "style_similarity": {s: bootstrap(group[f"sim_{s}"]) for s in styles}}
    for style in styles:  # what the LoRA learned: its similarity to its own style, minus the base model's
        if style in per_model and "base" in per_model:
            own = per_model[style]["style_similarity"][style]["mean"]
            per_model[style]["style_gain_over_base"] = own - per_model["base"]["style_similarity"][style]["mean"]
    return {"scorer": describe(cfg), "models": per_model}
