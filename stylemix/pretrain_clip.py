"""Pretrain the demo's CLIP scorer: a small open_clip model that knows the demo's photos and its four
styles, so the score stage's numbers mean something within the demo.

    python -m stylemix.pretrain_clip --out /tmp/tiny-clip  # ~11 min on 2 CPU cores
    python -m stylemix.pretrain_clip                      # writes stylemix/pretrained/tiny-clip/

Contrastive (CLIP's loss) on crops of the scikit-image photos as photos and as each demo style
(stylemix.demo_data), with captions that name the content and the style ("a pencil sketch of a
cat"). Every batch holds each (photo, look) pair once, so the batch's captions are distinct. Crops
are blurred at random, since the tiny model draws soft 64 px images. The result is an open_clip
`local-dir:` folder (open_clip_config.json + open_clip_model.safetensors), what `score.clip_model:
local-dir:stylemix/pretrained/tiny-clip` loads. Seeded; the pipeline never runs it.
"""
import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from stylemix.demo_data import PHOTOS, RECIPES, photo, random_view
from stylemix.outputs import atomic_dir
from stylemix.paths import PRETRAINED_TINY_CLIP
from stylemix.progress import track

RES = 64
LOOKS = {"photo": "photo", "watercolor": "watercolor painting", "pixelart": "pixel art picture",
         "cartoon": "cartoon drawing", "sketch": "pencil sketch"}
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": RES, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
ABOUT = ("the demo's scorer: trained on the demo's 8 photos and 4 styles only (python -m stylemix.pretrain_clip); "
         "use score.clip_pretrained: openai or a LAION model for real numbers")


def look_image(index: int, look: str, rng: np.random.Generator) -> np.ndarray:
    """A random crop of photo `index` as `look` (a demo style or the photo itself), at RES px."""
    rgb = photo(index)[0]
    if look == "photo":
        return random_view(rgb, rng, RES, 0.5, 1.0)
    stylize, side = RECIPES[look]
    styled = stylize(random_view(rgb, rng, side or 256, 0.5, 1.0))
    resample = cv2.INTER_NEAREST if look == "pixelart" else cv2.INTER_AREA
    return cv2.resize(styled, (RES, RES), interpolation=resample)


def captions(index: int, look: str) -> list[str]:
    _, long, short = PHOTOS[index]
    what = LOOKS[look]
    return [f"a {what} of {short}", f"a {what} of {long}", f"{short}, {what}", f"{long}, {what}"]


def bank(per_pair: int, seed: int) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """`per_pair` crops of every (photo, look) pair: uint8 images (pairs, per_pair, 3, RES, RES)."""
    pairs = [(i, look) for i in range(len(PHOTOS)) for look in LOOKS]
    rng = np.random.default_rng(seed)
    images = [np.stack([look_image(i, look, rng) for _ in range(per_pair)])
              for i, look in track(pairs, description="tiny-clip crops", unit="crops")]
    return torch.from_numpy(np.stack(images)).permute(0, 1, 4, 2, 3).contiguous(), pairs


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and a random Gaussian blur (sigma 0-1.5 px) per image; x in [0, 1]."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    sigma = torch.rand(len(x), generator=gen) * 1.5
    offsets = torch.arange(-3, 4, dtype=torch.float32)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = kernel / kernel.sum(-1, keepdim=True)  # (n, 7), one separable kernel per image
    n, c, h, w = x.shape
    flat = x.reshape(1, n * c, h, w)
    k = kernel.repeat_interleave(c, 0)
    flat = F.conv2d(F.pad(flat, (3, 3, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, 3, 3), mode="reflect"), k[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def train(a) -> tuple[torch.nn.Module, dict]:
    import open_clip

    torch.manual_seed(a.seed)
    model = open_clip.CLIP(**MODEL_CFG)
    tokenizer = open_clip.SimpleTokenizer()
    images, pairs = bank(a.per_pair, a.seed)
    texts = [captions(i, look) for i, look in pairs]
    ids = torch.stack([tokenizer(t) for t in texts])  # (pairs, templates, 77)
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1), torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(a.seed + 1)
    rows = torch.arange(len(pairs))
    started, recent = time.perf_counter(), []
    model.train()
    for step in range(a.steps):
        crop = torch.randint(0, a.per_pair, (len(pairs),), generator=gen)
        template = torch.randint(0, ids.shape[1], (len(pairs),), generator=gen)
        x = augment(images[rows, crop].float() / 255, gen)
        img, txt, scale = model(((x - mean) / std), ids[rows, template])
        logits = scale * img @ txt.T
        loss = (F.cross_entropy(logits, rows) + F.cross_entropy(logits.T, rows)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 100 == 0 or step == a.steps - 1:
            rate = (step + 1) / (time.perf_counter() - started)
            print(f"tiny-clip {step:5d} loss (50-step mean) {sum(recent) / len(recent):.4f}, {rate:.2f} steps/s", flush=True)
    return model.eval(), {"model_cfg": MODEL_CFG, "preprocess_cfg": {"size": RES, "mean": open_clip.OPENAI_DATASET_MEAN,
                                                                     "std": open_clip.OPENAI_DATASET_STD}, "about": ABOUT}


@torch.no_grad()
def style_check(model, seed: int) -> str:
    """Fresh crops: how often the nearest look (by the mean embedding of other fresh crops) is right."""
    import open_clip

    preprocess = open_clip.image_transform(RES, is_train=False)
    rng = np.random.default_rng(seed + 7)
    embed = lambda arrays: F.normalize(model.encode_image(torch.stack([preprocess(Image.fromarray(x)) for x in arrays])), dim=-1)  # noqa: E731
    refs = torch.stack([F.normalize(embed([look_image(i, look, rng) for i in range(len(PHOTOS))]).mean(0), dim=0) for look in LOOKS])
    hits = 0
    for look_index, look in enumerate(LOOKS):
        sims = embed([look_image(i, look, rng) for i in range(len(PHOTOS))]) @ refs.T
        hits += int((sims.argmax(-1) == look_index).sum())
    return f"{hits} of {len(PHOTOS) * len(LOOKS)} fresh crops nearest to their own look"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stylemix.pretrain_clip", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PRETRAINED_TINY_CLIP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-pair", type=int, default=24, help="crops per (photo, look) pair")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=2e-3)
    a = parser.parse_args()
    started = time.perf_counter()
    model, config = train(a)
    print(f"tiny-clip: {style_check(model, a.seed)}", flush=True)
    with atomic_dir(a.out) as tmp:
        weights = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
        save_file(weights, tmp / "open_clip_model.safetensors")
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"pretrain_clip: {a.out}/ in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
