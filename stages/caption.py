"""caption@S: machine captions for a style's filtered images, cached raw.

Backends: `sidecar` (the .txt beside each image, kohya's convention), `blip` / `blip2` (an
image-to-text model from caption.model, batched, on the GPU when there is one), `tags`
(comma-separated tags from a WD14 ONNX tagger, caption.tagger; stylemix.data.tagger). The output,
data/captions/<style>/metadata.jsonl, follows the Hugging Face imagefolder convention
(`file_name`, `text`). Manual overrides and the trigger word are applied where training reads
captions (stylemix/data/prompts.py), so editing them never reruns BLIP.
"""
import sys
from pathlib import Path

from more_itertools import chunked

from stylemix import params
from stylemix.data.tagger import tag_captions
from stylemix.errors import StyleMixError, run_stage
from stylemix.images import load_rgb
from stylemix.outputs import read_jsonl, write_jsonl
from stylemix.paths import CAPTIONS, FILTERED
from stylemix.progress import progress


def sidecar_captions(folder: Path, names: list[str]) -> list[str]:
    texts = []
    for name in names:
        sidecar = folder / (Path(name).stem + ".txt")
        texts.append(" ".join(sidecar.read_text().split()) if sidecar.is_file() else "")
    return texts


def model_captions(folder: Path, names: list[str], cfg: params.Caption) -> list[str]:
    """Caption with BLIP or BLIP-2 (any image-text-to-text model transformers can auto-load)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stylemix.gpu import default_device

    device = default_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(cfg.model)
        model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype).to(device).eval()
    except OSError as err:
        raise StyleMixError(
            f"caption.model = {cfg.model!r}: cannot load ({str(err).splitlines()[0]}); "
            "with HF_HUB_OFFLINE set it must already be in the cache or be a local folder"
        ) from None
    texts = []
    with progress(unit="images") as bar, torch.inference_mode():
        task = bar.add_task(f"{cfg.backend} captions", total=len(names))
        for batch in chunked(names, cfg.batch_size):
            images = [load_rgb(folder / n) for n in batch]
            inputs = processor(images=images, return_tensors="pt").to(device, dtype)
            out = model.generate(**inputs, max_new_tokens=cfg.max_new_tokens)
            texts += [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]
            bar.advance(task, len(batch))
    return texts


def caption_style(name: str, cfg: params.Caption, filtered: Path = FILTERED, out: Path = CAPTIONS) -> list[dict]:
    index = filtered / name / "index.jsonl"
    if not index.is_file():
        raise StyleMixError(f"style {name}: no filtered images ({index} missing); run `dvc repro filter@{name}` first")
    names = [row["file_name"] for row in read_jsonl(index)]
    if cfg.backend == "sidecar":
        texts = sidecar_captions(filtered / name, names)
    elif cfg.backend == "tags":
        texts = tag_captions(filtered / name, names, cfg)
    else:
        texts = model_captions(filtered / name, names, cfg)
    rows = [{"file_name": n, "text": t} for n, t in zip(names, texts)]
    missing = [r["file_name"] for r in rows if not r["text"]]
    if missing:
        print(f"caption {name}: {len(missing)} image(s) without a caption (trigger word only): {', '.join(missing[:5])}")
    write_jsonl(out / name / "metadata.jsonl", rows)
    return rows


def main() -> None:
    if len(sys.argv) != 2:
        raise StyleMixError("usage: python -m stages.caption STYLE")
    p = params.load("caption")
    rows = caption_style(sys.argv[1], p.caption)
    print(f"caption {sys.argv[1]}: {len(rows)} captions ({p.caption.backend}) in {CAPTIONS / sys.argv[1]}/metadata.jsonl")


if __name__ == "__main__":
    run_stage(main)
