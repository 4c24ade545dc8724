"""The frozen VAE's and text encoders' outputs that training reads instead of running them:
encode@S's for a style's images, the prior stage's for the base's own pictures."""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from more_itertools import chunked

from stylemix.data import buckets
from stylemix.data.conditioning import ALL_TEXT_ENCODERS, CHUNK, encode_text, flow_text, text_encoders, time_ids, tokenize
from stylemix.errors import StyleMixError
from stylemix.families import SDXL, architecture, is_flow
from stylemix.images import flat, load_image
from stylemix.progress import progress

BATCH = 8


def pixels(folder: Path, names: list[str], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images flattened onto white, in [-1, 1], and their alpha in [0, 1] (1 where there is none)."""
    rgb, alpha = [], []
    for name in names:
        img = load_image(folder / name)
        if img.size != size:
            raise StyleMixError(f"{folder / name} is {img.size[0]}x{img.size[1]}, not its bucket {buckets.name(size)} "
                                f"in index.jsonl; rerun `dvc repro filter@{folder.name}`")
        rgb.append(np.asarray(flat(img)))
        alpha.append(np.asarray(img.getchannel("A")) if img.mode == "RGBA" else np.full(img.size[::-1], 255, np.uint8))
    as_tensor = lambda arrays: torch.from_numpy(np.stack(arrays)).float()  # noqa: E731
    return as_tensor(rgb).permute(0, 3, 1, 2) / 127.5 - 1.0, as_tensor(alpha)[:, None] / 255


def encode_images(pipe, folder: Path, names: list[str], sizes: list[tuple[int, int]], device, label: str) -> dict[str, list]:
    """The VAE posterior of every image and its mirror image, one tensor per image, batched by bucket,
    in the denoiser's units ((mean - shift) x scale, std x scale: FLUX's and SD 3.5's VAEs shift);
    with transparent images, every image's alpha at latent resolution (`mask`, area-averaged)."""
    vae = pipe.vae.to(device)
    if vae.dtype == torch.float16 and vae.config.force_upcast:  # SDXL's own VAE overflows in fp16
        vae.to(torch.float32)
    scale, shift = vae.config.scaling_factor, vae.config.get("shift_factor") or 0.0
    store: dict[str, list] = {k: [None] * len(names) for k in ("mean", "std", "mean_flipped", "std_flipped", "mask")}
    with progress(unit="images") as bar:
        task = bar.add_task(label, total=len(names))
        for size in sorted(set(sizes)):
            rows = [i for i, s in enumerate(sizes) if s == size]
            for chunk in chunked(rows, BATCH):
                batch, alpha = pixels(folder, [names[i] for i in chunk], size)
                batch = batch.to(device, vae.dtype)
                for suffix, x in (("", batch), ("_flipped", batch.flip(-1))):
                    posterior = vae.encode(x).latent_dist
                    for key, value in (("mean", posterior.mean - shift), ("std", posterior.std)):
                        for i, row in zip(chunk, (value * scale).float().cpu()):
                            store[key + suffix][i] = row
                for i, row in zip(chunk, F.interpolate(alpha, size=posterior.mean.shape[-2:], mode="area")):
                    store["mask"][i] = row
                bar.advance(task, len(chunk))
    if all((m == 1).all() for m in store["mask"]):  # nothing transparent: no mask to keep
        del store["mask"]
    return store


def encode_captions(pipe, captions: list[str], device, max_tokens: int = CHUNK) -> dict[str, torch.Tensor]:
    """Token ids (for text-encoder training) and the frozen encoders' output of every caption (its
    first `max_tokens` tokens), plus the empty caption's (`empty_` keys) for caption dropout.
    FLUX.1 and SD 3.5: the encoders' output only (stylemix trains their transformer alone)."""
    if is_flow(pipe):
        for component in ALL_TEXT_ENCODERS:
            if (module := getattr(pipe, component, None)) is not None:
                module.to(device)
        hidden, pooled = zip(*(flow_text(pipe, list(chunk), device) for chunk in chunked(captions + [""], BATCH)))
        outputs = {"text_hidden": torch.cat(hidden).float().cpu(), "text_pooled": torch.cat(pooled).float().cpu()}
    else:
        ids = tokenize(pipe, captions + [""], max_tokens)
        encoders = [te.to(device) for te in text_encoders(pipe)]
        chunks = [encode_text(encoders, [x.to(device) for x in chunk]) for chunk in zip(*(x.split(BATCH) for x in ids.values()))]
        outputs = {"text_hidden": torch.cat([h for h, _ in chunks]).float().cpu()} | ids
        if chunks[0][1] is not None:
            outputs["text_pooled"] = torch.cat([p for _, p in chunks]).float().cpu()
    tensors = {}
    for key, value in outputs.items():
        tensors[key], tensors["empty_" + key] = value[:-1].contiguous(), value[-1:].contiguous()
    return tensors


def encode_pictures(pipe, folder: Path, records: list[dict], captions: list[str], device, label: str,
                    max_tokens: int = CHUNK) -> tuple[dict, dict[str, torch.Tensor]]:
    """Every picture of `records` (index rows: file_name, bucket, original_size, crop_top_left) and
    its caption: (per-picture tensors: encode_images', encode_captions' and for SDXL the time ids;
    the empty caption's, shared)."""
    names, sizes = [r["file_name"] for r in records], [tuple(r["bucket"]) for r in records]
    per_image = encode_images(pipe, folder, names, sizes, device, label)
    encoded = encode_captions(pipe, captions, device, max_tokens)
    shared = {k: v for k, v in encoded.items() if k.startswith("empty_")}
    per_image |= {k: v for k, v in encoded.items() if k not in shared}
    if architecture(pipe) == SDXL:  # SDXL's micro-conditioning
        per_image["time_ids"] = time_ids(records)
    return per_image, shared


def warn_cut(pipe, style: str, captions: list[str], names: list[str], max_tokens: int) -> None:
    """One line per style when captions are longer than the text encoders read: never cut silently."""
    lengths = [len(ids) - 2 for ids in pipe.tokenizer(captions).input_ids]  # without BOS and EOS
    if cut := [(n, k) for n, k in zip(names, lengths) if k > max_tokens]:
        longer = "" if max_tokens == 225 else f"; tags.max_token_length: {150 if max_tokens == 75 else 225} reads more"
        print(f"warning: style {style}: {len(cut)} caption(s) are longer than tags.max_token_length = {max_tokens} tokens "
              f"and are cut there (the longest, {max(cut, key=lambda x: x[1])[0]}, has {max(k for _, k in cut)}){longer}")
