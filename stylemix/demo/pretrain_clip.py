"""Pretrain the demo's CLIP scorer: a small open_clip model that knows the demo's emoji subjects and
its six looks, so the score stage's numbers (CLIP score, style similarity, the ground truth's style
and subject accuracy) mean something within the demo.

    python -m stylemix.demo.pretrain_clip --out /tmp/tiny-clip  # ~15 min on 2 CPU cores
    python -m stylemix.demo.pretrain_clip                      # writes stylemix/pretrained/tiny-clip/

Trained on the real pictures only (every committed subject in every look, stylemix.emoji), never on
generated ones. Each batch holds a set of subjects in all six looks; each picture's caption names its
subject, its look or both ("zebra", "openmoji emoji", "zebra, openmoji emoji"), and a caption counts
as a match for every picture in the batch it describes (a contrastive loss with several positives), so
the image tower must tell looks apart as well as subjects. Pictures are zoomed, shifted and blurred at
random, since the tiny model draws soft 64 px pictures at any framing. The result is an open_clip
`local-dir:` folder (open_clip_config.json + open_clip_model.safetensors), what `score.clip_model:
local-dir:stylemix/pretrained/tiny-clip` loads. Seeded; the pipeline never runs it.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from stylemix import emoji
from stylemix.outputs import atomic_dir
from stylemix.paths import PRETRAINED_TINY_CLIP
from stylemix.progress import track

RES = 64
# How a caption names each look (the text tower learns these words with the pictures).
LOOK_WORDS = {"noto": "noto emoji", "twemoji": "twemoji emoji", "fluent": "fluent gradient emoji",
              "flat": "fluent flat emoji", "lineart": "black line art emoji", "openmoji": "openmoji outline emoji"}
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": RES, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
ABOUT = ("the demo's scorer: trained on the real pictures of the demo's emoji subjects in its six looks only, never on "
         "generated ones (python -m stylemix.demo.pretrain_clip); use score.clip_pretrained: openai or a LAION model for "
         "real numbers")


def bank(per_pair: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """`per_pair` views of every (subject, look): uint8 images (subjects, looks, per_pair, 3, RES, RES)."""
    subjects, rng = emoji.subjects(), np.random.default_rng(seed)
    views = [[np.stack([emoji.random_view(look, s, RES, rng) for _ in range(per_pair)]) for look in emoji.LOOKS]
             for s in track(subjects, description="tiny-clip views", unit="subjects")]
    return torch.from_numpy(np.stack(views)).permute(0, 1, 2, 5, 3, 4).contiguous(), subjects


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


def caption(subject: str | None, look: str | None) -> str:
    parts = [emoji.words(subject)] if subject else []
    return ", ".join(parts + ([LOOK_WORDS[look]] if look else []))


def multi_positive_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy where a picture may match several captions and a caption several
    pictures: the target is spread evenly over each row's positives."""
    rows = positive / positive.sum(1, keepdim=True)
    cols = positive.T / positive.T.sum(1, keepdim=True)
    return (-(rows * logits.log_softmax(1)).sum(1).mean() - (cols * logits.T.log_softmax(1)).sum(1).mean()) / 2


def train(a) -> tuple[torch.nn.Module, dict]:
    import open_clip

    torch.manual_seed(a.seed)
    model = open_clip.CLIP(**MODEL_CFG)
    tokenizer = open_clip.SimpleTokenizer()
    images, subjects = bank(a.per_pair, a.seed)
    looks = list(emoji.LOOKS)
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1), torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(a.seed + 1)
    started, recent = time.perf_counter(), []
    model.train()
    for step in range(a.steps):
        chosen = torch.randperm(len(subjects), generator=gen)[: a.subjects_per_batch]
        s_idx = chosen.repeat_interleave(len(looks))  # each chosen subject in every look
        l_idx = torch.arange(len(looks)).repeat(len(chosen))
        crop = torch.randint(0, a.per_pair, (len(s_idx),), generator=gen)
        # each picture's caption names its subject (0), its look (1) or both (2)
        kind = torch.randint(0, 3, (len(s_idx),), generator=gen)
        named_s = torch.where(kind != 1, s_idx, -1)
        named_l = torch.where(kind != 0, l_idx, -1)
        texts = [caption(subjects[s] if s >= 0 else None, looks[lk] if lk >= 0 else None)
                 for s, lk in zip(named_s.tolist(), named_l.tolist())]
        positive = (((named_s[None] == s_idx[:, None]) | (named_s[None] < 0))
                    & ((named_l[None] == l_idx[:, None]) | (named_l[None] < 0))).float()  # picture i, caption j
        x = augment(images[s_idx, l_idx, crop].float() / 255, gen)
        img, txt, scale = model((x - mean) / std, tokenizer(texts))
        loss = multi_positive_loss(scale * img @ txt.T, positive)
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
def check(model, seed: int) -> str:
    """Fresh views (another seed): how often the nearest look (the mean of other fresh views of every
    subject in it) and the nearest subject name are right."""
    import open_clip

    preprocess = open_clip.image_transform(RES, is_train=False)
    rng, subjects, looks = np.random.default_rng(seed + 7), emoji.subjects()[::8], list(emoji.LOOKS)
    embed = lambda arrays: F.normalize(model.encode_image(torch.stack([preprocess(Image.fromarray(x)) for x in arrays])), dim=-1)  # noqa: E731
    refs = torch.stack([F.normalize(embed([emoji.random_view(look, s, RES, rng) for s in subjects]).mean(0), dim=0) for look in looks])
    names = F.normalize(model.encode_text(open_clip.tokenize([emoji.words(s) for s in subjects])), dim=-1)
    look_hits = subject_hits = 0
    for j, look in enumerate(looks):
        emb = embed([emoji.random_view(look, s, RES, rng) for s in subjects])
        look_hits += int(((emb @ refs.T).argmax(-1) == j).sum())
        subject_hits += int(((emb @ names.T).argmax(-1) == torch.arange(len(subjects))).sum())
    total = len(subjects) * len(looks)
    return f"fresh views: look right {look_hits / total:.0%}, subject right {subject_hits / total:.0%} of {total} (among {len(subjects)} names)"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stylemix.demo.pretrain_clip", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PRETRAINED_TINY_CLIP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-pair", type=int, default=6, help="views of each (subject, look) pair")
    parser.add_argument("--subjects-per-batch", type=int, default=32, help="a batch is these subjects in all six looks")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=2e-3)
    a = parser.parse_args()
    started = time.perf_counter()
    model, config = train(a)
    print(f"tiny-clip: {check(model, a.seed)}", flush=True)
    with atomic_dir(a.out) as tmp:
        weights = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
        save_file(weights, tmp / "open_clip_model.safetensors")
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"pretrain_clip: {a.out}/ in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
