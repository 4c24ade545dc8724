"""WD14-style tag captions (caption.backend: tags): an ONNX image tagger through onnxruntime.

A tagger is a folder or hub repo holding `model.onnx` and `selected_tags.csv` (SmilingWolf's
layout, which kohya's and A1111's taggers read). The model takes NHWC float32 BGR pixels in 0-255,
padded to a square with white, at the size its input declares; it outputs one probability per
row of the CSV (`name`, `category`: 0 general, 4 character, 9 rating). Ratings are never written.
"""
import csv
import re
from pathlib import Path

import numpy as np
from more_itertools import chunked
from PIL import Image

from stylemix import params
from stylemix.errors import StyleMixError
from stylemix.images import load_rgb
from stylemix.progress import progress

FILES = ("model.onnx", "selected_tags.csv")
GENERAL, CHARACTER = "0", "4"


def tagger_files(model: str) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) of a local folder, or of a hub repo (downloaded or cached)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        paths = [folder / f for f in FILES]
        if missing := [p.name for p in paths if not p.is_file()]:
            raise StyleMixError(f"caption.tagger.model = {model!r}: no {', '.join(missing)} in that folder "
                                f"(a WD14 tagger folder holds {' and '.join(FILES)})")
        return paths[0], paths[1]
    from huggingface_hub import hf_hub_download

    try:
        return tuple(Path(hf_hub_download(model, f)) for f in FILES)
    except Exception as err:  # offline, unknown repo, missing file: huggingface_hub's many error types
        raise StyleMixError(f"caption.tagger.model = {model!r}: cannot load ({str(err).splitlines()[0]}); "
                            "with HF_HUB_OFFLINE set it must already be in the cache or be a local folder") from None


def read_tags(path: Path) -> tuple[list[str], list[str]]:
    """(names, categories), in the model's output order."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise StyleMixError(f"{path}: a tag list needs the columns name and category (SmilingWolf's selected_tags.csv)")
    return [r["name"] for r in rows], [r["category"] for r in rows]


def tagger_input(image: Image.Image, size: int) -> np.ndarray:
    """The model's pixels for one image: white-padded square, resized, BGR, float32 0-255 (HWC)."""
    image = image.convert("RGB")
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return np.asarray(square.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)[:, :, ::-1]


def pick_tags(probs: np.ndarray, names: list[str], categories: list[str], cfg: params.Tagger) -> tuple[list[str], int]:
    """(tags, how many were excluded): character tags, then general tags, each by confidence
    (highest first), over their thresholds and not in cfg.exclude."""
    exclude = {t.strip().replace(" ", "_") for t in cfg.exclude}
    picked, excluded = [], 0
    for category, threshold in ((CHARACTER, cfg.character_threshold), (GENERAL, cfg.threshold)):
        hits = sorted((-p, n) for p, n, c in zip(probs, names, categories) if c == category and p >= threshold)
        picked += [n for _, n in hits if n not in exclude]
        excluded += sum(n in exclude for _, n in hits)
    # Underscores become spaces, except in tags without a word (kaomoji such as ^_^ or o_o).
    return [n if cfg.underscores or not re.search(r"[a-z]{2}", n) else n.replace("_", " ") for n in picked], excluded


def tag_captions(folder: Path, names: list[str], cfg: params.Caption) -> list[str]:
    """Comma-separated tags for each image; an image whose every tag is excluded gets an empty
    caption (the trigger alone) and is named."""
    import onnxruntime as ort

    model_file, tags_file = tagger_files(cfg.tagger.model)
    tag_names, categories = read_tags(tags_file)
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(model_file), providers=providers)
    spec = session.get_inputs()[0]
    size = spec.shape[1]
    if not isinstance(size, int):
        raise StyleMixError(f"{model_file}: input {spec.name} has shape {spec.shape}; a tagger takes (batch, size, size, 3)")
    texts, only_excluded = [], []
    with progress(unit="images") as bar:
        task = bar.add_task("tag captions", total=len(names))
        for batch in chunked(names, cfg.batch_size):
            pixels = np.stack([tagger_input(load_rgb(folder / n), size) for n in batch])
            probs = session.run(None, {spec.name: pixels})[0]
            if probs.shape[-1] != len(tag_names):
                raise StyleMixError(f"{model_file} outputs {probs.shape[-1]} scores but {tags_file} lists "
                                    f"{len(tag_names)} tags: they are not from the same tagger")
            for name, row in zip(batch, probs):
                tags, excluded = pick_tags(row, tag_names, categories, cfg.tagger)
                if excluded and not tags:
                    only_excluded.append(name)
                texts.append(", ".join(tags))
            bar.advance(task, len(batch))
    if only_excluded:
        print(f"caption: every tag of {len(only_excluded)} image(s) is in caption.tagger.exclude, so they train on the "
              f"trigger word alone: {', '.join(only_excluded[:5])}")
    return texts
