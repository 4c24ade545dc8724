"""prior: the pictures prior preservation learns beside every style (params `prior`; DreamBooth's
class images, kohya's regularisation images): the base model's own pictures of plain prompts, drawn
once here so a sweep never redraws them, or a folder of your own (each resized and cropped to its
aspect-ratio bucket, as the filter does). Writes data/prior/: images/ with a caption each, their
latents and encoded captions (latents.safetensors, the layout encode@S writes) and prior.png to look
at. With the prior off (prior.images 0 and no prior.folder) it writes only prior.json saying so."""
import sys
from pathlib import Path

import torch
from more_itertools import chunked

from stylemix import gpu, params
from stylemix.data import buckets, latent_cache
from stylemix.data.encoding import encode_pictures
from stylemix.drawing.render import render, use_sampler
from stylemix.errors import StyleMixError, run_stage
from stylemix.families import architecture, is_flow
from stylemix.images import UnreadableImage, contact_sheet, image_files, load_rgb
from stylemix.models.base_model import load_pipeline
from stylemix.outputs import atomic_dir, write_json
from stylemix.paths import LATENTS_FILE, PRIOR
from stylemix.progress import progress


def draw(pipe, cfg: params.Prior, base: params.Base, folder: Path) -> list[dict]:
    """cfg.images pictures, prompt after prompt, seed cfg.seed + i each; their index rows."""
    prompts = [cfg.prompts[i % len(cfg.prompts)] for i in range(cfg.images)]
    settings = params.Generate(prompts=cfg.prompts, steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                               **({"scheduler": "euler"} if is_flow(pipe) else {}))  # FLUX.1 / SD 3.5: their own sampler
    use_sampler(pipe, settings.scheduler)
    rows = []
    with progress(unit="images") as bar:
        task = bar.add_task("prior: the base draws", total=len(prompts))
        for batch in chunked(range(len(prompts)), settings.batch_size):
            texts = [prompts[i] for i in batch]
            for i, (image, meta) in zip(batch, render(pipe, texts, [cfg.seed + i for i in batch], settings, base, "prior", texts)):
                image.save(folder / f"prior_{i:04d}.png", pnginfo=meta)
                rows.append({"file_name": f"prior_{i:04d}.png", "caption": prompts[i], "original_size": list(image.size),
                             "crop_top_left": [0, 0], "bucket": list(image.size)})
            bar.advance(task, len(batch))
    return rows


def collect(cfg: params.Prior, base: params.Base, folder: Path) -> list[dict]:
    """The pictures of prior.folder, each fitted to its bucket into `folder`; their index rows."""
    source = Path(cfg.folder)
    files = image_files(source) if source.is_dir() else []
    if not files:
        raise StyleMixError(f"prior.folder = {cfg.folder!r}: no image files there; put your regularisation images in it "
                            "or set prior.folder: null to have the base draw them (prior.images)")
    sizes, rows = buckets.sizes(base), []
    for path in files:
        try:
            fitted, placed = buckets.fit(load_rgb(path), sizes, "lanczos")
        except UnreadableImage as err:
            raise StyleMixError(f"{path}: {err}; remove it from prior.folder") from None
        fitted.save(folder / f"{path.stem}.png")
        sidecar = path.with_suffix(".txt")
        rows.append({"file_name": f"{path.stem}.png", "caption": sidecar.read_text().strip() if sidecar.is_file() else cfg.prompts[0]}
                    | placed)
    return rows


@torch.inference_mode()
def build_prior(cfg: params.Prior, base: params.Base, out: Path = PRIOR) -> int:
    """Write `out` for the prior's settings; the number of pictures."""
    with atomic_dir(out) as tmp:
        if not cfg.active:
            write_json(tmp / "prior.json", {"images": 0, "about": "prior preservation is off (prior.images: 0, no prior.folder)"})
            return 0
        (tmp / "images").mkdir()
        device = gpu.default_device()
        pipe = load_pipeline(base).to(device)
        pipe.set_progress_bar_config(disable=True)
        rows = collect(cfg, base, tmp / "images") if cfg.folder else draw(pipe, cfg, base, tmp / "images")
        names, captions = [r["file_name"] for r in rows], [r["caption"] for r in rows]
        sizes = [tuple(r["bucket"]) for r in rows]
        per_image, shared = encode_pictures(pipe, tmp / "images", rows, captions, device, "encode prior")
        per_image.pop("mask", None)  # a prior picture counts whole
        meta = {"resolution": str(base.resolution), "base_model": base.model, "architecture": architecture(pipe)}
        latent_cache.save_rows(tmp / LATENTS_FILE, per_image, shared, list(range(len(rows))), names, sizes, captions, meta)
        for name, caption in zip(names, captions):
            (tmp / "images" / name).with_suffix(".txt").write_text(caption + "\n")
        tiles = [(load_rgb(tmp / "images" / n), c) for n, c in zip(names[:48], captions)]
        contact_sheet(tiles, tile=128, cols=8).save(tmp / "prior.png")
        write_json(tmp / "prior.json", {"images": len(rows), "source": cfg.folder or "drawn by the base", "weight": cfg.weight})
    return len(rows)


def main() -> None:
    if len(sys.argv) != 1:
        raise StyleMixError("usage: python -m stages.prior")
    p = params.load("base", "prior")
    count = build_prior(p.prior, p.base)
    print(f"prior: {count} pictures -> {PRIOR}/" if count else "prior: off (prior.images: 0, no prior.folder)")


if __name__ == "__main__":
    run_stage(main)
