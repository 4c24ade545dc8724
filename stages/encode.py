"""encode@S: run the frozen VAE and text encoder once per style, so training never does.

Stores, per filtered image, the VAE posterior (mean and std, already multiplied by the VAE's
scaling factor) of the image and of its mirror image, and the text encoder's hidden states of
its training caption (trigger word applied), plus the empty caption's for caption dropout.
Training samples latents from the stored posterior, as if it had run the VAE itself.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from stages import params
from stages.base_model import default_device, load_pipeline
from stages.caption import CAPTIONS
from stages.errors import StyleMixError, run_stage
from stages.filter import FILTERED
from stages.outputs import atomic_dir, read_jsonl
from stages.progress import progress
from stages.prompts import training_captions

LATENTS = Path("data/latents")
BATCH = 8


def pixels(folder: Path, names: list[str], resolution: int) -> torch.Tensor:
    arrays = []
    for name in names:
        img = Image.open(folder / name).convert("RGB")
        if img.size != (resolution, resolution):
            raise StyleMixError(f"{folder / name} is {img.size[0]}x{img.size[1]}, not base.resolution = {resolution}; "
                                f"rerun `dvc repro filter@{folder.name}`")
        arrays.append(np.asarray(img))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.inference_mode()
def encode_style(name: str, style: params.Style, base: params.Base,
                 filtered: Path = FILTERED, captions: Path = CAPTIONS, out: Path = LATENTS) -> dict:
    texts = training_captions(name, style, captions)
    names = [row["file_name"] for row in read_jsonl(filtered / name / "index.jsonl")]
    missing = [n for n in names if n not in texts]
    if missing:
        raise StyleMixError(f"style {name}: no caption for {', '.join(missing[:3])}; rerun `dvc repro caption@{name}`")
    pipe = load_pipeline(base.model, base.revision, base.dtype)
    device, dtype = default_device(), pipe.vae.dtype
    vae, text_encoder, tokenizer = pipe.vae.to(device), pipe.text_encoder.to(device), pipe.tokenizer
    scale = vae.config.scaling_factor
    store: dict[str, list[torch.Tensor]] = {k: [] for k in ("mean", "std", "mean_flipped", "std_flipped")}
    with progress() as bar:
        task = bar.add_task(f"encode {name}", total=len(names))
        for start in range(0, len(names), BATCH):
            batch = pixels(filtered / name, names[start : start + BATCH], base.resolution).to(device, dtype)
            for suffix, x in (("", batch), ("_flipped", batch.flip(-1))):
                posterior = vae.encode(x).latent_dist
                store["mean" + suffix].append((posterior.mean * scale).float().cpu())
                store["std" + suffix].append((posterior.std * scale).float().cpu())
            bar.advance(task, len(names[start : start + BATCH]))
    captions_in_order = [texts[n] for n in names]
    ids = tokenizer(captions_in_order + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    too_long = [n for n, c in zip(names, captions_in_order) if len(tokenizer(c).input_ids) > tokenizer.model_max_length]
    if too_long:
        print(f"warning: {len(too_long)} caption(s) of {name} exceed {tokenizer.model_max_length} tokens and are cut: {', '.join(too_long[:3])}")
    hidden = torch.cat([text_encoder(ids[i : i + BATCH].to(device))[0].float().cpu() for i in range(0, len(ids), BATCH)])
    tensors = {k: torch.cat(v).contiguous() for k, v in store.items()}
    tensors |= {"input_ids": ids[:-1].contiguous(), "text_hidden": hidden[:-1].contiguous(),
                "empty_ids": ids[-1:].contiguous(), "empty_hidden": hidden[-1:].contiguous()}
    meta = {"files": json.dumps(names), "captions": json.dumps(captions_in_order),
            "resolution": str(base.resolution), "base_model": base.model}
    with atomic_dir(out / name) as tmp:
        save_file(tensors, tmp / "latents.safetensors", metadata=meta)
    return tensors


def main() -> None:
    if len(sys.argv) != 2:
        raise StyleMixError("usage: python -m stages.encode STYLE")
    p = params.load("base", "styles")
    name = sys.argv[1]
    tensors = encode_style(name, params.style(p, name), p.base)
    print(f"encode {name}: {len(tensors['mean'])} images (+ mirrored) -> latents {tuple(tensors['mean'].shape[1:])} in {LATENTS / name}/")


if __name__ == "__main__":
    run_stage(main)
