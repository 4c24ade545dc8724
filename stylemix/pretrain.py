"""Pretrain the demo's `tiny` Stable Diffusion on the public-domain photos scikit-image ships, so that
"a tabby cat with green eyes" draws that cat, and the style LoRAs have something to restyle.

    python -m stylemix.pretrain --out /tmp/tiny  # ~15 min on 2 CPU cores; compare its samples.png first
    python -m stylemix.pretrain                  # writes stylemix/pretrained/tiny/ (what the base stage copies)

Seeded; the pipeline never runs it (`make repro` copies the committed result), and it reads nothing
the pipeline writes. Three phases:
1. the VAE (diffusers AutoencoderKL, 4x downsampling) as a general autoencoder: random 64 px crops
   of the photos and of scikit-image's other sample images (textures, text on paper, line art,
   a logo, a colour wheel), each recoloured at random (lighter, darker, grey, inverted,
   posterized, more or less saturated), so it can encode what the LoRAs will learn to draw, not
   only these photos (L1 + MSE + an image-gradient term for edges, a small KL);
2. a fixed bank of crops is encoded once; their latents' spread sets the VAE's scaling_factor;
3. the UNet (UNet2DConditionModel) on the bank, epsilon prediction on SD 1.5's noise schedule,
   min-SNR weighted, with a CLIP text encoder (hidden 32, the real CLIP BPE) trained with it on
   captions naming each photo's subject, half of them behind one or two made-up words (as trigger
   words will be), 10% dropped for classifier-free guidance; EMA weights.
The result is an ordinary StableDiffusionPipeline folder stored in float16 (the tokenizer is not
stored: the base stage derives it from open_clip's BPE), and samples.png beside it: per subject,
the photo and four seeds.
"""
import argparse
import math
import random
import string
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from skimage import data
from transformers import CLIPTextConfig, CLIPTextModel

from stylemix.base_model import clip_tokenizer
from stylemix.demo_data import PHOTOS, photo, random_view
from stylemix.images import grid
from stylemix.outputs import atomic_dir
from stylemix.paths import PRETRAINED_TINY

SD15_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)
RES = 64
CROP = 0.75  # random crops take 75-100% of a photo's short side


# More of scikit-image's public-domain images, for the VAE only: the UNet still learns just PHOTOS.
TEXTURES = [data.brick, data.grass, data.gravel, data.text, data.checkerboard, data.horse, data.page, data.moon,
            data.clock, data.immunohistochemistry, data.logo, data.retina, data.cell, data.colorwheel,
            data.binary_blobs, data.shepp_logan_phantom]


def as_rgb(img: np.ndarray) -> np.ndarray:
    """Any scikit-image sample (bool, float, grey, RGBA) as uint8 RGB; transparency becomes white."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) / max(float(img.max()), 1e-8) * 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.shape[-1] == 4:
        alpha = img[..., 3:].astype(np.float32) / 255
        img = (img[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(img[..., :3])


def recolor(view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random photometric change, so the VAE meets pale, dark, grey, inverted and flat images."""
    x = view.astype(np.float32)
    grey = x.mean(-1, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.3, 2.0)  # saturation
    if rng.random() < 0.25:
        x = np.repeat(grey, 3, axis=-1)
    if rng.random() < 0.15:
        x = 255 - x
    if rng.random() < 0.4:  # toward white paper or toward black
        x = x + (rng.choice([255.0, 0.0]) - x) * rng.uniform(0.1, 0.6)
    if rng.random() < 0.2:
        step = 256 / rng.integers(2, 5)
        x = np.floor(x / step) * step + step / 2
    return np.clip(x, 0, 255).astype(np.uint8)


def vae_view(sources: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One training crop: half the time a photo as it is, else any source recoloured."""
    if rng.random() < 0.5:
        return random_view(sources[rng.integers(0, len(PHOTOS))], rng, RES, CROP)
    return recolor(random_view(sources[rng.integers(0, len(sources))], rng, RES, 0.3, 1.0), rng)


def captions(index: int) -> list[str]:
    """What the text encoder learns to say about photo `index`: its short name and its demo caption."""
    _, long, short = PHOTOS[index]
    return [f"a photo of {short}", short, long, f"a photo of {long}"]


def with_unknown_words(text: str, rng: random.Random) -> str:
    """Half the captions get one or two made-up words in front ("qkstyle, a photo of a cat"), as the
    trigger words of the LoRAs will: the text encoder learns that words it does not know leave the
    subject alone. Without them two triggers ("skstyle, ctstyle, a tabby cat ...", a combination's
    prompt) sent every prompt to the coins."""
    if not text or rng.random() < 0.5:
        return text
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 6))) + ("style" if rng.random() < 0.5 else "")
             for _ in range(rng.randint(1, 2))]
    return ", ".join([*words, text])


def to_tensor(views: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def build(a) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    torch.manual_seed(a.seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    torch.manual_seed(a.seed)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=16, latent_channels=4,
                        sample_size=RES, scaling_factor=1.0)
    torch.manual_seed(a.seed + 10)
    unet = UNet2DConditionModel(sample_size=RES // 4, block_out_channels=(32, 64, 128), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
                                cross_attention_dim=32, attention_head_dim=(1, 2, 4), norm_num_groups=16)
    return vae, unet, text_encoder


def train_vae(a, vae: AutoencoderKL, photos: list[np.ndarray]) -> None:
    sources = photos + [as_rgb(load()) for load in TEXTURES]  # the photos first: vae_view picks them by index
    torch.manual_seed(a.seed)
    rng = np.random.default_rng([a.seed, 1])
    opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0)
    vae.train()
    for step in range(a.vae_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, a.vae_steps, a.vae_lr, 50)
        x = to_tensor([vae_view(sources, rng) for _ in range(a.vae_batch)])
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        edges = sum((torch.diff(rec, dim=d) - torch.diff(x, dim=d)).abs().mean() for d in (-1, -2))
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = (rec - x).abs().mean() + F.mse_loss(rec, x) + 0.5 * edges + 5e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == a.vae_steps - 1:
            print(f"vae {step:5d} reconstruction mse {F.mse_loss(rec, x).item():.4f}", flush=True)
    vae.eval()


@torch.no_grad()
def encode_bank(a, vae: AutoencoderKL, photos: list[np.ndarray]):
    """`a.bank` random crops of every photo through the encoder: (means, stds, photo index), and the
    scaling factor that gives the latents unit spread, as SD's 0.18215 does for its VAE."""
    rng = np.random.default_rng([a.seed, 2])
    views = [random_view(p, rng, RES, CROP) for p in photos for _ in range(a.bank)]
    labels = torch.arange(len(photos)).repeat_interleave(a.bank)
    x = to_tensor(views)
    posteriors = [vae.encode(x[i : i + 64]).latent_dist for i in range(0, len(x), 64)]
    mean, std = torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])
    scale = float(1.0 / (mean + std * torch.randn_like(std)).std())
    print(f"bank: {len(x)} crops, latents {tuple(mean.shape[1:])}, scaling_factor {scale:.4f}", flush=True)
    return mean, std, labels, scale


class EMA:
    """An exponential moving average of the trained weights, the ones that get saved."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for shadow, p in zip(self.shadow, self.params):
            shadow.lerp_(p.detach(), 1 - decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for shadow, p in zip(self.shadow, self.params):
            p.copy_(shadow)


def train_unet(a, unet, text_encoder, mean, std, labels, scale) -> None:
    texts, tokenizer = [c for i in range(len(PHOTOS)) for c in captions(i)] + [""], clip_tokenizer()
    per_photo, empty = len(captions(0)), len(texts) - 1
    groups = [{"params": list(unet.parameters()), "lr": a.unet_lr},
              {"params": list(text_encoder.parameters()), "lr": 2 * a.unet_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    params = [p for g in groups for p in g["params"]]
    ema, bases = EMA(params, 0.995), [g["lr"] for g in groups]
    alphas = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)
    snr = alphas / (1 - alphas)
    rng, words_rng = torch.Generator().manual_seed(a.seed + 11), random.Random(a.seed + 12)
    unet.train()
    text_encoder.train()
    started, recent = time.perf_counter(), []
    for step in range(a.unet_steps):
        for group, base in zip(opt.param_groups, bases):
            group["lr"] = cosine_lr(step, a.unet_steps, base, 50)
        idx = torch.randint(0, len(labels), (a.batch,), generator=rng)
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=rng)) * scale
        which = torch.randint(0, per_photo, (a.batch,), generator=rng)
        drop = torch.rand(a.batch, generator=rng) < 0.1
        rows = torch.where(drop, empty, labels[idx] * per_photo + which)
        ids = tokenizer([with_unknown_words(texts[r], words_rng) for r in rows.tolist()], padding="max_length",
                        max_length=77, truncation=True, return_tensors="pt").input_ids
        t = torch.randint(0, 1000, (a.batch,), generator=rng)
        noise = torch.randn(z.shape, generator=rng)
        at = alphas[t].view(-1, 1, 1, 1)
        pred = unet(at.sqrt() * z + (1 - at).sqrt() * noise, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = (((pred - noise) ** 2).mean(dim=(1, 2, 3)) * torch.clamp(snr[t], max=5.0) / snr[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        recent = (recent + [loss.item()])[-50:]
        if step % 100 == 0 or step == a.unet_steps - 1:
            rate = (step + 1) / (time.perf_counter() - started)
            print(f"unet {step:5d} loss (50-step mean) {sum(recent) / len(recent):.4f}, {rate:.2f} steps/s", flush=True)
    ema.copy_to_params()
    unet.eval()
    text_encoder.eval()


@torch.no_grad()
def samples(pipe, photos: list[np.ndarray]):
    """Per subject: the photo, then its caption drawn at four seeds, as the demo draws (DPM++ 10 steps)."""
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    rows = []
    for photo_rgb, (_, caption, _) in zip(photos, PHOTOS):
        drawn = pipe([caption] * 4, negative_prompt=["blurry, low quality"] * 4, num_inference_steps=10, guidance_scale=7.5,
                     height=RES, width=RES, generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
        reference = Image.fromarray(random_view(photo_rgb, np.random.default_rng(0), RES, share=1.0))
        rows.append((caption, [reference, *drawn]))
    return grid(rows, ["the photo", *[f"seed {s}" for s in range(4)]], "tiny: each subject's caption", tile=96)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stylemix.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PRETRAINED_TINY)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--bank", type=int, default=96, help="encoded crops per photo")
    parser.add_argument("--unet-steps", type=int, default=1250)
    parser.add_argument("--unet-lr", type=float, default=1e-3, help="the text encoder's is twice this")
    parser.add_argument("--batch", type=int, default=24)
    a = parser.parse_args()
    started = time.perf_counter()
    photos = [photo(i)[0] for i in range(len(PHOTOS))]
    vae, unet, text_encoder = build(a)
    train_vae(a, vae, photos)
    mean, std, labels, scale = encode_bank(a, vae, photos)
    train_unet(a, unet, text_encoder, mean, std, labels, scale)
    vae.register_to_config(scaling_factor=scale)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with atomic_dir(a.out) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        for file in (tmp / "tokenizer").iterdir():  # the base stage derives it from open_clip's BPE
            file.unlink()
        (tmp / "tokenizer").rmdir()
        saved = StableDiffusionPipeline.from_pretrained(tmp, tokenizer=clip_tokenizer(), dtype=torch.float32,
                                                        safety_checker=None, requires_safety_checker=False)
        saved.set_progress_bar_config(disable=True)
        samples(saved, photos).save(tmp / "samples.png")
    print(f"pretrain: {a.out}/ in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
