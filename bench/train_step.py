"""Benchmark: how close is a training step of ours to the bare UNet step, and how much of the
VAE + text-encoder cost does caching remove? All variants run in this one process, on the same
tiny model, images (the demo's openmoji style at 128 px) and batch; results are ratios.

    python bench/train_step.py            # writes bench/results/train_step.json

- floor: UNet forward + backward + AdamW step on a batch already in memory, with the same LoRA,
         memory format and optimizer as ours (plain: without channels_last and fused AdamW).
- ours:  stylemix.training.loop.train_style's loop (data indexing, posterior sampling, noise, min-SNR loss,
         accelerate backward, clipping, optimizer + LR scheduler, dvclive logging, progress bar).
- naive: the floor plus running the VAE encoder and the text encoder on the batch every step.
Also: what a fused AdamW, channels_last and torch.compile each give over the plain floor.
"""
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from diffusers import DDPMScheduler  # noqa: E402

from stages.caption import caption_style  # noqa: E402
from stages.encode import encode_style  # noqa: E402
from stages.filter import filter_style  # noqa: E402
from stylemix import params  # noqa: E402
from stylemix.adapters.lora_files import add_lora  # noqa: E402
from stylemix.data.encoding import pixels  # noqa: E402
from stylemix.demo.sample import build_style  # noqa: E402
from stylemix.models.base_model import build_tiny, load_pipeline  # noqa: E402
from stylemix.training.loop import diffusion_loss, train_style  # noqa: E402

RESOLUTION, BATCH, WARMUP, STEPS, ROUNDS = 128, 4, 5, 30, 5
OUT = Path(__file__).parent / "results" / "train_step.json"


def now() -> tuple[float, float]:
    """Wall-clock and process CPU time (all threads): the second barely moves with other load."""
    return time.perf_counter(), time.process_time()


def medians(stamps: list[tuple[float, float]]) -> tuple[float, float]:
    return tuple(statistics.median(b[i] - a[i] for a, b in zip(stamps, stamps[1:])) for i in (0, 1))


def median_step(step, warmup: int = WARMUP, steps: int = STEPS) -> tuple[float, float]:
    for _ in range(warmup):
        step()
    stamps = [now()]
    for _ in range(steps):
        step()
        stamps.append(now())
    return medians(stamps)


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(r[0] for r in runs), min(r[1] for r in runs)


def interleaved(steps: dict) -> dict[str, tuple[float, float]]:
    """Median step time of each variant, measured in alternating rounds (the machine's load drifts);
    each variant keeps its best round."""
    runs = {name: [] for name in steps}
    for _ in range(ROUNDS):
        for name, step in steps.items():
            runs[name].append(median_step(step, steps=STEPS // 2))
    return {name: best(r) for name, r in runs.items()}


def unet_with_lora(model: Path, p: params.Params, channels_last: bool = False):
    pipe = load_pipeline(str(model))
    pipe.unet.requires_grad_(False)
    torch.manual_seed(0)
    add_lora(pipe.unet, [pipe.text_encoder], p.lora)
    pipe.unet.train()
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    return pipe


def floor_step(unet, latents, cond, fused: bool = False):
    optimizer = torch.optim.AdamW([q for q in unet.parameters() if q.requires_grad], lr=1e-4, fused=fused)
    t = torch.randint(0, 1000, (len(latents),))

    def step():
        loss = F.mse_loss(unet(latents, t, cond).sample, latents)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def loss_step(unet, data, p: params.Params, noise_scheduler, fused: bool = False):
    """The floor with our loss function (posterior sampling, flips, dropout, noise, min-SNR)."""
    optimizer = torch.optim.AdamW([q for q in unet.parameters() if q.requires_grad], lr=1e-4, fused=fused)
    gen = torch.Generator().manual_seed(0)

    def step():
        diffusion_loss(unet, noise_scheduler, data, p.train, gen).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model = build_tiny(work / "tiny")
    p = params.validate({
        "base": {"model": str(model), "resolution": RESOLUTION},
        "styles": {"openmoji": {"source": str(work / "src"), "trigger": "omstyle"}},
        "lora": {"rank": 4, "alpha": 4},
        "train": {"max_steps": WARMUP + STEPS + 1, "batch_size": BATCH, "checkpoint_every": 10_000,
                  "validation_steps": 1, "validation_prompts": ["a cat"]},
    })
    (work / "src").mkdir()
    build_style("openmoji", work / "src", count=16, seed=0)
    filter_style("openmoji", p.styles["openmoji"], params.Filter(), p.base, work / "filtered", work / "reports")
    caption_style("openmoji", params.Caption(), work / "filtered", work / "captions")
    cached = encode_style("openmoji", p.styles["openmoji"], p.base, work / "filtered", work / "captions", work / "latents")
    batch = cached.rows(next(iter(cached.buckets)), list(range(BATCH)))
    latents, cond = batch["mean"], batch["text_hidden"]

    results = {}
    cl_latents = latents.to(memory_format=torch.channels_last)
    plain, pipe = unet_with_lora(model, p), unet_with_lora(model, p, channels_last=True)
    # The floor as ours runs it on this machine: channels_last convolutions, AdamW fused on CUDA only.
    floor = floor_step(pipe.unet, cl_latents, cond, fused=torch.cuda.is_available())
    results |= interleaved({
        "plain_floor_s": floor_step(plain.unet, latents, cond),
        "plain_fused_adamw_s": floor_step(plain.unet, latents, cond, fused=True),
        "plain_channels_last_s": floor_step(pipe.unet, cl_latents, cond),
        "first_floor_s": floor,
        "floor_with_our_loss_s": loss_step(pipe.unet, batch, p,
                                           DDPMScheduler.from_config(pipe.scheduler.config), torch.cuda.is_available()),
    })

    # naive: pixels through the VAE and captions through the text encoder, every step
    names = sorted(q.name for q in (work / "filtered/openmoji").glob("*.png"))[:BATCH]
    images, _ = pixels(work / "filtered/openmoji", names, (RESOLUTION, RESOLUTION))
    ids = pipe.tokenizer(["omstyle, a cat"] * BATCH, padding="max_length", max_length=77, return_tensors="pt").input_ids
    scale = pipe.vae.config.scaling_factor

    def encoders():
        with torch.no_grad():
            return pipe.vae.encode(images).latent_dist.sample() * scale, pipe.text_encoder(ids)[0]
    results["vae_te_s"] = median_step(encoders)

    def naive():
        encoders()
        floor()

    # ours: the real training loop, timed between steps via its on_step hook, in rounds
    # alternating with the floor and the naive step; each keeps its best round.
    ours, floors, naives = [], [results.pop("first_floor_s")], []
    for r in range(ROUNDS):
        stamps = []
        AcceleratorState._reset_state(True)
        train_style("openmoji", p, lambda step, _: stamps.append(now()), out=work / "lora",
                    ckpt_root=work / f"ckpt{r}", logs=work / "logs", latents=work / "latents")
        ours.append(medians(stamps[WARMUP:-1]))  # the last step also checkpoints
        floors.append(median_step(floor, steps=STEPS // 2))
        naives.append(median_step(naive, steps=STEPS // 2))
    results["ours_s"], results["floor_s"], results["naive_s"] = best(ours), best(floors), best(naives)

    compiled = unet_with_lora(model, p, channels_last=True)
    compiled.unet = torch.compile(compiled.unet)
    start = now()
    floor_compiled = floor_step(compiled.unet, cl_latents, cond, fused=torch.cuda.is_available())
    floor_compiled()
    results["compile_first_step_s"] = tuple(b - a for a, b in zip(start, now()))
    results["floor_compiled_s"] = median_step(floor_compiled)

    def ratios(i: int) -> dict[str, float]:
        r = {k: v[i] for k, v in results.items()}
        f = r["floor_s"]
        return {
            "ours_over_floor": r["ours_s"] / f,
            "naive_over_floor": r["naive_s"] / f,
            "vae_te_time_removed": 1 - max(0.0, r["ours_s"] - f) / (r["naive_s"] - f),
            "our_loss_over_floor": r["floor_with_our_loss_s"] / f,
            "fused_adamw_over_plain": r["plain_fused_adamw_s"] / r["plain_floor_s"],
            "channels_last_over_plain": r["plain_channels_last_s"] / r["plain_floor_s"],
            "compiled_over_floor": r["floor_compiled_s"] / f,
            "compile_break_even_steps": r["compile_first_step_s"] / (f - r["floor_compiled_s"]),
        }

    report = {
        "setup": {"resolution": RESOLUTION, "batch": BATCH, "steps_timed": STEPS, "rounds": ROUNDS,
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                  "device": "cpu"},
        "seconds_per_step": {"wall": {k: v[0] for k, v in results.items()},
                             "cpu": {k: v[1] for k, v in results.items()}},
        "ratios": {"wall": ratios(0), "cpu": ratios(1)},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
