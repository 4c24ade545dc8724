"""Pretrain the demo's `tiny` Stable Diffusion on the base looks of the committed emoji sets (Noto and
Twemoji, stylemix.emoji), so that "zebra" draws a zebra, and the style LoRAs have something to restyle.

    python -m stylemix.demo.pretrain --out /tmp/tiny  # ~60 min on 2 CPU cores; compare its samples.png first
    python -m stylemix.demo.pretrain                  # writes stylemix/pretrained/tiny/ (what the base stage copies)
    python -m stylemix.demo.pretrain --decoder-only   # phase 4 alone on the stored folder (~30 min)

Seeded; the pipeline never runs it (`make repro` copies the committed result), and it reads nothing
the pipeline writes. Four phases:
1. the VAE (diffusers AutoencoderKL, 4x downsampling) as an autoencoder of every look, the styles'
   too (the LoRAs' pictures must be encodable; the VAE learns no words): a bank of random zooms and
   offsets of every subject in all six looks (L1 + MSE + an image-gradient term for edges, a small KL);
2. every subject in the two base looks, encoded once; their latents' spread sets the VAE's
   scaling_factor;
3. the UNet (UNet2DConditionModel) on those latents, epsilon prediction on SD 1.5's noise schedule,
   min-SNR weighted; a quarter of each batch (--style-share) is random views of the four LoRA looks
   without a caption (every subject but the held-out ones, emoji.HELDOUT), so the UNet can denoise
   any look while words still draw only the base's (a base that had never seen line art denoised
   it worse than predicting zero noise, and every LoRA then spent itself on that and lost the
   prompt); with a CLIP text encoder (hidden 32, the real CLIP BPE) trained with it on the
   subjects' names ("alarm clock"), half of them behind one or two made-up words (as trigger words
   will be), 10% dropped for classifier-free guidance; EMA weights. While it trains, the demo scorer
   (stylemix/pretrained/tiny-clip, made first by python -m stylemix.demo.pretrain_clip) reads what it draws
   of every subject: its subject accuracy among all the names.
4. the decoder alone, on the frozen encoder's latents of every look (the held-out subjects in the base
   looks only), so the latents the UNet learnt stay the same and only their pixels sharpen. It
   starts from the float16 weights that get stored, so `--decoder-only` on the stored folder does
   the same. Without it the VAE was the looks' ceiling: of the held-out subjects' real pictures sent
   through encoder and decoder, the demo scorer kept 4 of 12 in Fluent colour and 6 of 12 in Fluent
   flat, so no LoRA could draw those looks better (tests/test_base_model.py holds it to the change).
The result is an ordinary StableDiffusionPipeline folder stored in float16 (the tokenizer is not
stored: the base stage derives it from open_clip's BPE), and samples.png beside it: per subject,
its two real pictures and four seeds.
"""

import argparse
import math
import random
import shutil
import string
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from more_itertools import chunked
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from stylemix import emoji
from stylemix.images import grid, on_white
from stylemix.models.base_model import clip_tokenizer
from stylemix.outputs import atomic_dir
from stylemix.paths import PRETRAINED_TINY, PRETRAINED_TINY_CLIP

SD15_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)
RES = 64
BASE_LOOKS = ("noto", "twemoji")  # what the base draws; the other four are the LoRAs' to teach


def with_unknown_words(text: str, rng: random.Random) -> str:
    """Half the captions get one or two made-up words in front ("qkstyle, zebra"), as the trigger
    words of the LoRAs will: the text encoder learns that words it does not know leave the subject
    alone. Without them a combination's two triggers sent every prompt to one subject."""
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
    return base * (0.05 + 0.475 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def build(a) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    torch.manual_seed(a.seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    torch.manual_seed(a.seed)
    # Four channels a norm group: one channel a group would normalize each channel's mean away, and
    # with it the pictures' colours.
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                        sample_size=RES, scaling_factor=1.0)
    torch.manual_seed(a.seed + 10)
    unet = UNet2DConditionModel(sample_size=RES // 4, block_out_channels=(32, 64, 128), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
                                cross_attention_dim=32, attention_head_dim=(1, 2, 4), norm_num_groups=8)
    return vae, unet, text_encoder


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + MSE + an image-gradient term for edges: the VAE's and the decoder's phases."""
    edges = sum((torch.diff(rec, dim=d) - torch.diff(x, dim=d)).abs().mean() for d in (-1, -2))
    return (rec - x).abs().mean() + F.mse_loss(rec, x) + 0.5 * edges


def train_vae(a, vae: AutoencoderKL, subjects: list[str]) -> None:
    torch.manual_seed(a.seed)
    rng = np.random.default_rng([a.seed, 1])
    bank = to_tensor([emoji.random_view(look, s, RES, rng) for s in subjects for look in emoji.LOOKS for _ in range(a.vae_views)])
    opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0)
    vae.train()
    started = time.perf_counter()
    for step in range(a.vae_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, a.vae_steps, a.vae_lr, 50)
        x = bank[torch.from_numpy(rng.integers(0, len(bank), a.vae_batch))]
        x = torch.where(torch.from_numpy(rng.random(len(x)) < 0.5)[:, None, None, None], x.flip(-1), x)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = reconstruction_loss(rec, x) + 5e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == a.vae_steps - 1:
            print(f"vae {step:5d} reconstruction mse {F.mse_loss(rec, x).item():.4f}, {time.perf_counter() - started:.0f} s", flush=True)
    vae.eval()


def refine_decoder(a, vae: AutoencoderKL, subjects: list[str]) -> None:
    """Phase 4: the decoder (and the convolution in front of it) learns from the frozen encoder's
    latents of random views of every look, with phase 1's reconstruction loss."""
    noise, rng = torch.Generator().manual_seed(a.seed + 4), np.random.default_rng([a.seed, 4])
    pairs = [(look, s) for s in subjects for look in emoji.LOOKS if look in BASE_LOOKS or s not in emoji.HELDOUT]
    bank = to_tensor([emoji.random_view(look, s, RES, rng) for look, s in pairs for _ in range(a.decoder_views)])
    with torch.no_grad():
        posteriors = [vae.encode(chunk).latent_dist for chunk in bank.split(256)]
    mean, std = torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])
    vae.requires_grad_(False)
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for param in trained:
        param.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=a.decoder_lr, weight_decay=0.0)
    vae.train()
    started = time.perf_counter()
    for step in range(a.decoder_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, a.decoder_steps, a.decoder_lr, 50)
        i = torch.from_numpy(rng.integers(0, len(bank), a.decoder_batch))
        x = bank[i]
        rec = vae.decode(mean[i] + std[i] * torch.randn(std[i].shape, generator=noise)).sample
        loss = reconstruction_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        if step % 200 == 0 or step == a.decoder_steps - 1:
            print(f"decoder {step:5d} reconstruction mse {F.mse_loss(rec, x).item():.4f}, {time.perf_counter() - started:.0f} s", flush=True)
    vae.requires_grad_(False)
    vae.eval()
    if PRETRAINED_TINY_CLIP.is_dir():
        print("decoder: held-out pictures kept in their look " + ", ".join(f"{k} {v:.0%}" for k, v in looks_kept(vae).items()), flush=True)


def real(look: str, subject: str) -> np.ndarray:
    """The subject in the look as the base learns it: whole, centred, on white."""
    return np.asarray(on_white(emoji.render(look, subject, 2 * RES)).resize((RES, RES), Image.Resampling.BOX))


@torch.no_grad()
def encode_bank(vae: AutoencoderKL, subjects: list[str]):
    """Every subject in each base look through the encoder: (means, stds, subject index), and the
    scaling factor that gives the latents unit spread, as SD's 0.18215 does for its VAE."""
    x = to_tensor([real(look, s) for s in subjects for look in BASE_LOOKS])
    labels = torch.arange(len(subjects)).repeat_interleave(len(BASE_LOOKS))
    posteriors = [vae.encode(chunk).latent_dist for chunk in x.split(64)]
    mean, std = torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])
    scale = float(1.0 / (mean + std * torch.randn_like(std)).std())
    print(f"bank: {len(x)} pictures, latents {tuple(mean.shape[1:])}, scaling_factor {scale:.4f}", flush=True)
    return mean, std, labels, scale


@torch.no_grad()
def encode_styles(vae: AutoencoderKL, subjects: list[str], views: int, seed: int):
    """Random views of every subject but the held-out ones in the LoRAs' looks: (means, stds)."""
    rng = np.random.default_rng([seed, 3])
    looks = [look for look in emoji.LOOKS if look not in BASE_LOOKS]
    x = to_tensor([emoji.random_view(look, s, RES, rng) for s in subjects if s not in emoji.HELDOUT
                   for look in looks for _ in range(views)])
    posteriors = [vae.encode(chunk).latent_dist for chunk in x.split(64)]
    print(f"styles: {len(x)} uncaptioned views of the {len(looks)} LoRA looks", flush=True)
    return torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])


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
    def swap(self) -> None:
        """Exchange the trained and the averaged weights (twice: back as they were)."""
        for shadow, p in zip(self.shadow, self.params):
            kept = p.detach().clone()
            p.copy_(shadow)
            shadow.copy_(kept)


def pipeline(vae, unet, text_encoder, scale: float) -> StableDiffusionPipeline:
    vae.register_to_config(scaling_factor=scale)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@torch.no_grad()
def draw(pipe, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
    """As the demo draws: DPM++ 10 steps, guidance 4, one batch."""
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompts, negative_prompt=[""] * len(prompts), num_inference_steps=10, guidance_scale=4, height=RES, width=RES,
                generator=[torch.Generator().manual_seed(s) for s in seeds]).images


@torch.no_grad()
def looks_kept(vae: AutoencoderKL) -> dict[str, float]:
    """Per look, the share of the held-out subjects' real pictures that the demo scorer still puts in
    that look (nearest its real pictures' mean, among all six) after the VAE's encoder and decoder:
    what a perfect LoRA of the look could reach at most."""
    from stylemix import params
    from stylemix.evaluation.scoring import embed_images, load_scorer

    scorer = load_scorer(params.Score(clip_model=f"local-dir:{PRETRAINED_TINY_CLIP}"))
    reals = {look: [real(look, s) for s in emoji.HELDOUT] for look in emoji.LOOKS}
    centroids = F.normalize(torch.stack([embed_images(scorer, [Image.fromarray(a) for a in arrays]).mean(0)
                                         for arrays in reals.values()]), dim=-1)
    kept = {}
    for i, (look, arrays) in enumerate(reals.items()):
        decoded = vae.decode(vae.encode(to_tensor(arrays).to(vae.dtype)).latent_dist.mean).sample.float()
        pictures = VaeImageProcessor().postprocess(decoded, output_type="pil")
        kept[look] = float(((embed_images(scorer, pictures) @ centroids.T).argmax(-1) == i).float().mean())
    return kept


class SubjectWatch:
    """The demo scorer's reading of what the model draws: the share of its pictures (one per subject)
    nearest their own subject's name, among all the names."""

    def __init__(self, subjects: list[str]):
        from stylemix import params
        from stylemix.evaluation.scoring import embed_texts, load_scorer

        self.subjects = subjects
        self.scorer = load_scorer(params.Score(clip_model=f"local-dir:{PRETRAINED_TINY_CLIP}"))
        self.names = embed_texts(self.scorer, [emoji.words(s) for s in subjects])

    def __call__(self, pipe) -> float:
        from stylemix.evaluation.scoring import embed_images

        prompts = [emoji.words(s) for s in self.subjects]
        pictures = [im for chunk in chunked(prompts, 25) for im in draw(pipe, chunk, [0] * len(chunk))]
        hits = (embed_images(self.scorer, pictures) @ self.names.T).argmax(-1) == torch.arange(len(prompts))
        return float(hits.float().mean())


def train_unet(a, pipe, mean, std, labels, scale, styles, watch: SubjectWatch | None) -> None:
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    names = [emoji.words(s) for s in emoji.subjects()]
    groups = [{"params": list(unet.parameters()), "lr": a.unet_lr},
              {"params": list(text_encoder.parameters()), "lr": 2 * a.unet_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    params = [p for g in groups for p in g["params"]]
    ema, bases = EMA(params, 0.999), [g["lr"] for g in groups]
    alphas = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)
    snr = alphas / (1 - alphas)
    rng, words_rng = torch.Generator().manual_seed(a.seed + 11), random.Random(a.seed + 12)
    started, recent = time.perf_counter(), []
    uncaptioned = round(a.style_share * a.batch)
    for step in range(a.unet_steps):
        unet.train()
        text_encoder.train()
        for group, base in zip(opt.param_groups, bases):
            group["lr"] = cosine_lr(step, a.unet_steps, base, 100)
        idx = torch.randint(0, len(labels), (a.batch - uncaptioned,), generator=rng)
        other = torch.randint(0, len(styles[0]), (uncaptioned,), generator=rng)
        z = torch.cat([mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=rng),
                       styles[0][other] + styles[1][other] * torch.randn(styles[0][other].shape, generator=rng)]) * scale
        drop = (torch.rand(len(idx), generator=rng) < 0.1).tolist()
        texts = ["" if dropped else with_unknown_words(names[i], words_rng) for dropped, i in zip(drop, labels[idx].tolist())]
        texts += [""] * uncaptioned
        ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
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
        recent = (recent + [loss.item()])[-100:]
        if step % 200 == 0 or step == a.unet_steps - 1:
            rate = (step + 1) / (time.perf_counter() - started)
            print(f"unet {step:5d} loss (100-step mean) {sum(recent) / len(recent):.4f}, {rate:.2f} steps/s", flush=True)
        if watch and (step + 1) % a.watch_every == 0 and step + 1 < a.unet_steps:
            unet.eval()
            text_encoder.eval()
            ema.swap()
            print(f"unet {step + 1:5d} subject accuracy (EMA weights) {watch(pipe):.0%} of {len(watch.subjects)}", flush=True)
            ema.swap()
    ema.swap()  # keep the averaged weights
    unet.eval()
    text_encoder.eval()


def samples(pipe, subjects: list[str]):
    """Per subject: its two real pictures, then its name drawn at four seeds, as the demo draws."""
    rows = []
    for subject in subjects:
        drawn = draw(pipe, [emoji.words(subject)] * 4, list(range(4)))
        rows.append((emoji.words(subject), [Image.fromarray(real(look, subject)) for look in BASE_LOOKS] + drawn))
    return grid(rows, [*BASE_LOOKS, *[f"seed {s}" for s in range(4)]], "tiny: each subject's name", tile=96)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stylemix.demo.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PRETRAINED_TINY)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-views", type=int, default=4, help="random views of each (subject, look) the VAE learns from")
    parser.add_argument("--unet-steps", type=int, default=7000)
    parser.add_argument("--unet-lr", type=float, default=1e-3, help="the text encoder's is twice this")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--style-share", type=float, default=0.25, help="share of each batch from the LoRA looks, uncaptioned")
    parser.add_argument("--style-views", type=int, default=2, help="random views of each (subject, LoRA look) in that share")
    parser.add_argument("--watch-every", type=int, default=1000, help="steps between subject-accuracy readings (0: none)")
    parser.add_argument("--decoder-steps", type=int, default=4000)
    parser.add_argument("--decoder-batch", type=int, default=32)
    parser.add_argument("--decoder-lr", type=float, default=1e-3)
    parser.add_argument("--decoder-views", type=int, default=2, help="random views of each (subject, look) the decoder learns from")
    parser.add_argument("--decoder-only", action="store_true", help="phase 4 alone, on the folder --out holds")
    a = parser.parse_args()
    started = time.perf_counter()
    subjects = emoji.subjects()
    if a.decoder_only:
        return decoder_only(a, subjects, started)
    vae, unet, text_encoder = build(a)
    train_vae(a, vae, subjects)
    mean, std, labels, scale = encode_bank(vae, subjects)
    styles = encode_styles(vae, subjects, a.style_views, a.seed)
    pipe = pipeline(vae, unet, text_encoder, scale)
    watch = SubjectWatch(subjects) if a.watch_every and PRETRAINED_TINY_CLIP.is_dir() else None
    train_unet(a, pipe, mean, std, labels, scale, styles, watch)
    pipe.to(torch.float16).to(torch.float32)  # phase 4 starts where --decoder-only does: from the stored weights
    refine_decoder(a, pipe.vae, subjects)
    if watch:
        print(f"tiny: subject accuracy {watch(pipe):.0%} of {len(subjects)} subjects (chance {1 / len(subjects):.1%})", flush=True)
    with atomic_dir(a.out) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        for file in (tmp / "tokenizer").iterdir():  # the base stage derives it from open_clip's BPE
            file.unlink()
        (tmp / "tokenizer").rmdir()
        save_samples(tmp, subjects)
    print(f"pretrain: {a.out}/ in {time.perf_counter() - started:.0f} s", flush=True)


def decoder_only(a, subjects: list[str], started: float) -> None:
    """Phase 4 on a stored folder: its VAE's decoder refined, everything else kept as it is."""
    vae = AutoencoderKL.from_pretrained(a.out / "vae", torch_dtype=torch.float32)
    refine_decoder(a, vae, subjects)
    with atomic_dir(a.out) as tmp:
        shutil.copytree(a.out, tmp, dirs_exist_ok=True)
        shutil.rmtree(tmp / "vae")
        vae.to(torch.float16).save_pretrained(tmp / "vae", safe_serialization=True)
        shutil.copy2(a.out / "vae/config.json", tmp / "vae/config.json")  # as it was, without the path it was read from
        save_samples(tmp, subjects)
    print(f"pretrain: {a.out}/vae refined in {time.perf_counter() - started:.0f} s", flush=True)


def save_samples(folder: Path, subjects: list[str]) -> None:
    """samples.png, drawn by the folder as stored (float16 weights, the base stage's tokenizer)."""
    saved = StableDiffusionPipeline.from_pretrained(folder, tokenizer=clip_tokenizer(), dtype=torch.float32,
                                                    safety_checker=None, requires_safety_checker=False)
    samples(saved, subjects[:: max(1, len(subjects) // 16)][:16]).save(folder / "samples.png")


if __name__ == "__main__":
    main()
