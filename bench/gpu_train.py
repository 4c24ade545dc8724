"""Benchmark: training speed and memory where users train, on a CUDA GPU at the real models' size.

    python bench/gpu_train.py           # CUDA: SD 1.5 at 512 px (batch 1 and 4), SDXL, FLUX.1 [dev] and
                                        # SD 3.5 Medium at 1024 px (batch 1); --only one of them
    python bench/gpu_train.py --tiny    # the same code on the CPU with the tiny models, but torch.compile
                                        # (minutes on a CPU): what tests/test_bench.py runs

The bases are built from their real configs (stylemix/configs/) with random weights: nothing is
downloaded, and speed does not depend on the weights. LoRA rank 32 on attention (the reference
setting), bf16 mixed precision. Per model and batch size, seconds per step and peak CUDA memory of:
- floor:     the UNet's or transformer's forward + backward + optimizer step on a batch already on the
             GPU, same LoRA, same precision, channels_last (UNets) and fused AdamW as ours
             (plain_floor: without those two);
- ours:      stylemix.training.loop.train_style, the real code path of train@S, from latents and text
             cached by encode@S (the demo's images), timed between its steps; and ours with gradient
             checkpointing, with torch.compile, with 8-bit AdamW (when bitsandbytes is there), and for
             FLUX.1 / SD 3.5 with the frozen transformer in 8 bits (train.quantize_base: int8);
- reference: diffusers' training scripts' loop (train_text_to_image_lora.py; the FLUX.1 / SD 3
             DreamBooth LoRA scripts with captions and no latent cache): the VAE and the text encoders
             (T5-XXL too) run on every step's batch, then the same denoiser step.
Floors are timed with CUDA events after warm-up, in interleaved rounds (each keeps its best); ratios
come from this one run. Results: bench/results/gpu_train.json (--tiny: gpu_train_tiny.json) with
the device's name and the torch and CUDA versions. The device machine has no dvc: train_style then
logs to a no-op logger (the JSON says so); bench/gpu_wheels.sh fetches what else it lacks.
"""
import argparse
import importlib
import json
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import diffusers  # noqa: E402
import transformers  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from stages.caption import caption_style  # noqa: E402
from stages.encode import encode_style  # noqa: E402
from stages.filter import filter_style  # noqa: E402
from stylemix import params  # noqa: E402
from stylemix.data.conditioning import flow_text, unet_kwargs  # noqa: E402
from stylemix.data.encoding import pixels  # noqa: E402
from stylemix.demo.sample import build_style  # noqa: E402
from stylemix.families import FLOW, FLUX, SD3, denoiser  # noqa: E402
from stylemix.models.base_model import build_tiny, clip_tokenizer, load_pipeline  # noqa: E402
from stylemix.models.single_file import CONFIGS, save_configs  # noqa: E402
from stylemix.models.tiny_flow import build_tiny_flow, t5_tokenizer  # noqa: E402
from stylemix.training import flow, loop  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
# (model, resolution, batch sizes): the settings, and their tiny stand-ins for --tiny.
REAL = [("sd15", 512, [1, 4]), ("sdxl", 1024, [1]), ("flux-dev", 1024, [1]), ("sd35-medium", 1024, [1])]
TINY = [("sd15", 64, [1, 4]), ("sdxl", 64, [1]), ("flux-dev", 64, [1]), ("sd35-medium", 64, [1])]
FAMILY = {"sd15": "sd15", "sdxl": "sdxl", "flux-dev": FLUX, "sd35-medium": SD3}


def random_model(arch: str, folder: Path, tiny: bool) -> Path:
    """A diffusers folder of the architecture with random weights: the real configs, or the tiny ones."""
    if FAMILY[arch] in FLOW:  # --tiny: the tiny model's configs, through the same builder as the real ones
        config = save_configs(load_pipeline(str(build_tiny_flow(folder.parent / "tiny", FAMILY[arch]))),
                              folder.parent / "tiny-configs") if tiny else CONFIGS[arch]
        return random_flow_model(config, folder)
    if tiny:
        return build_tiny(folder, sdxl=arch == "sdxl")
    config = CONFIGS[arch]
    torch.manual_seed(0)
    parts = dict(unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet")),
                 vae=AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")),
                 text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder")),
                 tokenizer=clip_tokenizer(), scheduler=DDPMScheduler.from_pretrained(config / "scheduler"))
    if arch == "sdxl":
        parts |= dict(text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config / "text_encoder_2")),
                      tokenizer_2=clip_tokenizer(pad_token="!"))
        pipe = StableDiffusionXLPipeline(**parts, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    return folder


def random_flow_model(config: Path, folder: Path) -> Path:
    """FLUX.1 / SD 3.5 from a config folder, every component random, written in bf16 (FLUX.1: 24 GB of
    transformer and 9.5 GB of T5-XXL); T5's tokenizer is the tiny models' (its ids fit the resized embedding)."""
    torch_dtype = torch.bfloat16
    index = json.loads((config / "model_index.json").read_text())
    torch.manual_seed(0)
    parts = {}
    for component, entry in index.items():
        if not isinstance(entry, list) or entry[0] is None:  # the pipeline's own settings; components it has none of
            continue
        library, cls = entry
        if component.startswith("tokenizer"):
            parts[component] = t5_tokenizer() if cls.startswith("T5") else clip_tokenizer(**({"pad_token": "!"} if component == "tokenizer_2" else {}))
        elif library == "diffusers" and component == "scheduler":
            parts[component] = getattr(diffusers, cls).from_pretrained(config / component)
        elif library == "diffusers":
            model_cls = getattr(diffusers, cls)
            parts[component] = model_cls.from_config(model_cls.load_config(config / component)).to(torch_dtype)
        else:
            parts[component] = getattr(transformers, cls)(transformers.AutoConfig.from_pretrained(config / component)).to(torch_dtype)
    t5 = next(k for k, m in parts.items() if isinstance(m, transformers.T5EncoderModel))
    parts[t5].resize_token_embeddings(len(parts[t5.replace("text_encoder", "tokenizer")]))
    getattr(diffusers, index["_class_name"])(**parts).save_pretrained(folder, safe_serialization=True)
    return folder


class Timer:
    """Seconds of one call: CUDA events on a GPU (no host sync inside the step), else the wall clock."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def many(self, step, warmup: int, steps: int) -> list[float]:
        for _ in range(warmup):
            step()
        if not self.cuda:
            stamps = [time.perf_counter()]
            for _ in range(steps):
                step()
                stamps.append(time.perf_counter())
            return [b - a for a, b in zip(stamps, stamps[1:])]
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        events[0].record()
        for e in events[1:]:
            step()
            e.record()
        torch.cuda.synchronize()
        return [a.elapsed_time(b) / 1000 for a, b in zip(events, events[1:])]


def peak_reset(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(cuda: bool) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None


def with_lora(p: params.Params, device, channels_last: bool = True):
    """The models exactly as train@S prepares them (frozen bf16 base, float32 LoRA), in train mode."""
    cfg = p.train.model_copy(update={"channels_last": channels_last})
    pipe, *_ = loop.prepare_models(p, cfg, device, "style", {})
    denoiser(pipe).train()
    return pipe


def denoiser_loss(net, latents, cond, pooled, time_ids) -> torch.Tensor:
    """A UNet's noise error at a random timestep, or a flow transformer's velocity error at a random sigma."""
    noise = torch.randn_like(latents)
    if not hasattr(net, "transformer_blocks"):
        t = torch.randint(0, 1000, (len(latents),), device=latents.device)
        pred = net(latents + noise, t, cond, **unet_kwargs(pooled, time_ids if pooled is not None else None)).sample
        return F.mse_loss(pred.float(), noise.float())
    sigma = torch.rand(len(latents), device=latents.device)
    s = sigma.view(-1, 1, 1, 1)
    dtype = net.dtype
    pred = flow.predict(net, ((1 - s) * latents + s * noise).to(dtype), sigma.to(dtype), cond.to(dtype), pooled.to(dtype), 1.0)
    return F.mse_loss(pred.float(), (noise - latents).float())


def encode_batch(batch: dict, encoders, vae, text_pipe) -> tuple:
    """The reference loop's encoding of every step's pixels and captions: the UNets' CLIP encoders
    (`encoders`, on token ids), or a flow pipeline's own encode_prompt (T5 included)."""
    with torch.no_grad():
        latents = vae.encode(batch["pixels"]).latent_dist.sample()
        latents = (latents - (vae.config.shift_factor or 0)) * vae.config.scaling_factor
        if text_pipe is not None:
            return (latents, *flow_text(text_pipe, batch["captions"], latents.device))
        outs = [enc(ids, output_hidden_states=True) for enc, ids in zip(encoders, batch["ids"])]
        cond = torch.cat([o.hidden_states[-2] if len(encoders) > 1 else o[0] for o in outs], dim=-1)
        return latents, cond, outs[-1].text_embeds if len(encoders) > 1 else None


def denoiser_step(pipe, batch: dict, fused: bool, encode=None):
    """One optimizer step of the UNet's or transformer's LoRA on `batch` (the floor); with `encode`, the
    reference loop's step, which encodes pixels and captions first."""
    net = denoiser(pipe)
    trainable = [q for q in net.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=fused)
    lr = get_scheduler("constant", optimizer)
    device = batch["latents"].device
    autocast = torch.autocast(device.type, torch.bfloat16)

    def step():
        with autocast:
            latents, cond, pooled = encode(batch) if encode else (batch["latents"], batch["cond"], batch.get("pooled"))
            loss = denoiser_loss(net, latents, cond, pooled, batch.get("time_ids"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        lr.step()
        optimizer.zero_grad(set_to_none=True)
    return step


class NullLive:
    """train_style's logger where dvclive is not installed (the GPU machine)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    summary: dict = {}
    plots_dir = "/nonexistent/null-live"  # no validation images to keep in checkpoints


def ours(p: params.Params, work: Path, run: str, cuda: bool, **train) -> dict:
    """train_style with `train` overrides: median seconds between its steps after warm-up, and the peak."""
    cfg = p.model_copy(update={"train": p.train.model_copy(update=train)})
    stamps, peaks = [], []

    def on_step(step, _):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        peaks.append(peak_gib(cuda))  # during training only: saving the LoRA draws validation images
    AcceleratorState._reset_state(True)
    peak_reset(cuda)
    loop.train_style("style", cfg, on_step, out=work / run / "lora", ckpt_root=work / run / "ckpt",
                         logs=work / run / "logs", latents=work / "latents")
    gaps = [b - a for a, b in zip(stamps, stamps[1:])][2:]  # the first steps compile and warm the allocator
    return {"s": statistics.median(gaps), "peak_gib": peaks[-1]}


def bench_model(arch: str, resolution: int, batches: list[int], work: Path, args, cuda: bool) -> dict:
    device = torch.device("cuda" if cuda else "cpu")
    model = random_model(arch, work / "model", args.tiny)
    is_flow = FAMILY[arch] in FLOW
    count = max(batches) * 2 + 2
    p = params.validate({
        "base": {"model": str(model), "resolution": resolution},
        "styles": {"style": {"source": str(work / "src"), "trigger": "omstyle"}},
        "lora": {"rank": 32, "alpha": 32, "targets": ATTENTION},
        "train": {"mixed_precision": "bf16", "checkpoint_every": 100_000, "validation_steps": 1, "validation_prompts": ["a cat"]}
        | ({"min_snr_gamma": None} if is_flow else {}),  # the UNets' loss weighting (flow models refuse it)
    })
    (work / "src").mkdir()
    build_style("openmoji", work / "src", count=count, seed=0)
    filter_style("style", p.styles["style"], params.Filter(), p.base, work / "filtered", work / "reports")
    caption_style("style", params.Caption(), work / "filtered", work / "captions")
    cached = encode_style("style", p.styles["style"], p.base, work / "filtered", work / "captions", work / "latents")
    names = sorted(q.name for q in (work / "filtered/style").glob("*.png"))
    timer = Timer(cuda)
    results = {}
    for batch in batches:
        row = {}
        on = {k: v.to(device) for k, v in cached.rows(next(iter(cached.buckets)), list(range(batch))).items()}
        data = {"latents": on["mean"] if is_flow else on["mean"].to(memory_format=torch.channels_last), "cond": on["text_hidden"],
                "pooled": on.get("text_pooled"), "time_ids": on.get("time_ids")}
        data = {k: v for k, v in data.items() if v is not None}
        pipe = with_lora(p, device)
        # A flow model's plain floor differs only by unfused AdamW (no convolutions): the same model, not a second one.
        plain = pipe if is_flow else with_lora(p, device, channels_last=False)
        # Training dropped a flow model's text encoders: the reference loop's come from a second load of the
        # base, without its transformer (FLUX.1's would be 24 GB more on the GPU).
        text_pipe = load_pipeline(p.base, "bfloat16", transformer=False).to(device) if is_flow else None
        vae = (text_pipe or pipe).vae.to(device, torch.bfloat16)
        encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e]  # on the device, bf16
        tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t]
        captions = [f"omstyle, a cat {i}" for i in range(batch)]
        ids = [t(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.to(device)
               for t in tokenizers]
        images = pixels(work / "filtered/style", names[:batch], (resolution, resolution))[0].to(device, torch.bfloat16)
        reference = data | {"pixels": images, "ids": ids, "captions": captions}
        steps = {"floor": denoiser_step(pipe, data, fused=cuda),
                 "plain_floor": denoiser_step(plain, data | {"latents": on["mean"]}, fused=False),
                 "reference": denoiser_step(pipe, reference, fused=cuda, encode=partial(encode_batch, encoders=encoders, vae=vae, text_pipe=text_pipe))}
        times = {name: [] for name in steps}
        for _ in range(args.rounds):  # interleaved: a drifting clock or load hits every variant alike
            for name, step in steps.items():
                times[name].append(statistics.median(timer.many(step, args.warmup, args.steps)))
        for name, step in steps.items():
            peak_reset(cuda)
            step()
            row[name] = {"s": min(times[name]), "peak_gib": peak_gib(cuda)}
        del pipe, plain, text_pipe, vae, encoders, steps
        if cuda:
            torch.cuda.empty_cache()
        common = {"batch_size": batch, "max_steps": args.warmup + args.steps + 3}
        row["ours"] = ours(p, work, f"b{batch}", cuda, **common)
        row["ours_gradient_checkpointing"] = ours(p, work, f"b{batch}gc", cuda, gradient_checkpointing=True, **common)
        if cuda:  # compiling the UNet's backward takes minutes on a CPU: --tiny leaves this variant out
            row["ours_compile"] = ours(p, work, f"b{batch}c", cuda, compile=True, **common)
        if cuda and importable("bitsandbytes"):
            row["ours_adamw8bit"] = ours(p, work, f"b{batch}8", cuda, optimizer="adamw8bit", **common)
        if is_flow and importable("torchao"):  # what fits FLUX.1 on a 24 GB card
            row["ours_int8_base"] = ours(p, work, f"b{batch}q", cuda, quantize_base="int8", **common)
        f = row["floor"]["s"]
        row["ratios"] = {"ours_over_floor": row["ours"]["s"] / f, "reference_over_ours": row["reference"]["s"] / row["ours"]["s"],
                         "plain_floor_over_floor": row["plain_floor"]["s"] / f,
                         **{f"{k}_over_ours": row[k]["s"] / row["ours"]["s"] for k in row if k.startswith("ours_")}}
        results[f"batch_{batch}"] = row
        print(f"{arch} {resolution} px batch {batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in row["ratios"].items()), flush=True)
    return {"resolution": resolution, **results}


def importable(package: str) -> bool:
    """Whether an optional package imports here (bitsandbytes, torchao: the GPU machine may lack them)."""
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny models on the CPU: checks the script, measures nothing")
    parser.add_argument("--only", choices=list(FAMILY), help="one model (one device call each if all are too long)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        sys.exit("bench/gpu_train.py needs a CUDA GPU; --tiny runs it on the CPU with the tiny models")
    try:
        import dvclive  # noqa: F401
        logging = "dvclive"
    except ImportError:
        loop.open_live = lambda folder, history, images=None: NullLive()
        logging = "none: dvclive is not installed here, so train_style logged nothing"
    out = args.out or RESULTS / ("gpu_train_tiny.json" if args.tiny else "gpu_train.json")
    report = {"setup": {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.machine()})", "torch": torch.__version__,
        "cuda": torch.version.cuda, "precision": "bf16", "lora": "rank 32 on attention", "warmup": args.warmup,
        "steps": args.steps, "rounds": args.rounds, "train_style_logging": logging, "tiny": args.tiny}}
    for arch, resolution, batches in TINY if args.tiny else REAL:
        if args.only in (None, arch):
            with tempfile.TemporaryDirectory(prefix=f"bench-gpu-{arch}-") as tmp:
                report[arch] = bench_model(arch, resolution, batches, Path(tmp), args, cuda)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
