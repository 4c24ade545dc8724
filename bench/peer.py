"""Benchmark: stylemix against a peer on the same work. The peer is diffusers' own example
`examples/text_to_image/train_text_to_image_lora.py`, run from a diffusers checkout you point at
(nothing of it is in this repo); stylemix is encode@S + train@S. Both train one style's LoRA on the same
base (models/base), the same pictures (the style's filtered images that train@S trains on) with the same
captions (trigger word included), for the same steps, batch, rank and alpha, resolution, learning rate
and schedule, seed, min-SNR gamma and noise offset, on the peer's layers (attention only). Then
each draws the held-out subjects (generate.prompts x seeds) and the ground truth judges them
(stylemix.evaluation.ground_truth). Written: wall time of each (from the first model load to the LoRA file),
style accuracy in the style's look, subject accuracy and nearness to the real pictures; and stylemix's
own default targets beside them.

    make repro                               # the workspace: base model, filtered images, captions, truth
    pip install datasets tensorboard         # what the example needs beyond stylemix's stack
    python bench/peer.py --diffusers ~/src/diffusers [--style lineart]   # writes bench/results/peer.json

Use a checkout whose version the pinned diffusers satisfies (the example checks with check_min_version).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from more_itertools import chunked

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stages.encode import encode_style  # noqa: E402
from stylemix import params  # noqa: E402
from stylemix.adapters.lora_files import WEIGHTS  # noqa: E402
from stylemix.data.latent_cache import LatentCache  # noqa: E402
from stylemix.data.prompts import training_captions  # noqa: E402
from stylemix.drawing.render import SCHEDULERS, render  # noqa: E402
from stylemix.evaluation import ground_truth, scoring  # noqa: E402
from stylemix.images import load_rgb  # noqa: E402
from stylemix.models.base_model import load_pipeline  # noqa: E402
from stylemix.paths import BASE_DIR, FILTERED, TRUTH, latents_file  # noqa: E402
from stylemix.training.loop import train_style  # noqa: E402

EXAMPLE = Path("examples/text_to_image/train_text_to_image_lora.py")
OUT = Path(__file__).parent / "results" / "peer.json"
PEER_TARGETS = "attn"  # the example's LoraConfig: to_q, to_k, to_v, to_out.0


def imagefolder(style: str, captions: dict[str, str], names: list[str], folder: Path) -> None:
    """The pictures train@S trains on, with their training captions, as a Hugging Face imagefolder;
    flattened onto white as encode@S sees them (the example's convert("RGB") would drop the alpha)."""
    folder.mkdir(parents=True)
    rows = []
    for name in names:
        load_rgb(FILTERED / style / name).save(folder / name)
        rows.append({"file_name": name, "text": captions[name]})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_peer(script: Path, data: Path, out: Path, p: params.Params, cfg: params.Train, steps: int) -> float:
    """The example on `data`, at stylemix's settings; returns its wall time."""
    args = [sys.executable, str(script), f"--pretrained_model_name_or_path={BASE_DIR.resolve()}", f"--train_data_dir={data}",
            "--caption_column=text", f"--resolution={p.base.resolution}", "--center_crop", "--random_flip",
            f"--train_batch_size={cfg.batch_size}", f"--max_train_steps={steps}", f"--learning_rate={cfg.lr}",
            f"--lr_scheduler={cfg.scheduler}", f"--lr_warmup_steps={cfg.warmup_steps}", f"--rank={p.lora.rank}",
            f"--seed={cfg.seed}", f"--noise_offset={cfg.noise_offset}", *([f"--snr_gamma={cfg.min_snr_gamma}"] if cfg.min_snr_gamma else []),
            f"--adam_weight_decay={cfg.weight_decay}", f"--max_grad_norm={cfg.max_grad_norm}", "--mixed_precision=no",
            "--dataloader_num_workers=0", f"--checkpointing_steps={steps + 1}", f"--output_dir={out}"]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=7200,
                            env=os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    if result.returncode:
        sys.exit(f"the peer failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def judge(p: params.Params, style: str, trigger: str, loras: dict[str, Path], scorer, truth) -> dict:
    """Draw generate.prompts x seeds with each LoRA file (diffusers' loader, as a user would), then the
    ground truth's verdict on the pictures, per LoRA."""
    pipe = load_pipeline(p.base)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SCHEDULERS[p.generate.scheduler](pipe.scheduler.config)
    jobs = [(prompt, seed) for prompt in p.generate.prompts for seed in p.generate.seeds]
    rows, embeddings = [], []
    for name, folder in {"base": None, **loras}.items():
        if folder:
            pipe.load_lora_weights(str(folder), weight_name=WEIGHTS, adapter_name=name)
            pipe.set_adapters([name])
        pictures = []
        for chunk in chunked(jobs, p.generate.batch_size):
            texts = [f"{trigger}, {prompt}" if folder else prompt for prompt, _ in chunk]
            pictures += [image for image, _ in render(pipe, texts, [s for _, s in chunk], p.generate, p.base, name,
                                                      [q for q, _ in chunk])]
        embeddings.append(scoring.embed_images(scorer, pictures))
        rows += [{"model": name, "prompt": prompt, "seed": seed} for prompt, seed in jobs]
        if folder:
            pipe.delete_adapters(name)
    table = pd.DataFrame(rows)
    judged = ground_truth.judge(table, torch.cat(embeddings), truth, scorer)
    verdict = ground_truth.summarize(judged, truth)
    out = {}
    for name in loras:
        m = verdict["models"][name]
        out[name] = {"style_accuracy": verdict["style_accuracy"][name][style],
                     "subject_accuracy": m["subject_accuracy"]["mean"],
                     "nearness": float(judged[judged["model"] == name][f"truth_sim_{style}"].mean())}
    out["base"] = {"style_accuracy": verdict["style_accuracy"]["base"][style],
                   "subject_accuracy": verdict["models"]["base"]["subject_accuracy"]["mean"],
                   "nearness": float(judged[judged["model"] == "base"][f"truth_sim_{style}"].mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers", type=Path, required=True, help="a diffusers checkout (its examples/ folder is used)")
    parser.add_argument("--style", default="lineart")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    script = args.diffusers.expanduser() / EXAMPLE
    if not script.is_file():
        parser.error(f"{script} not found: --diffusers must be a diffusers checkout")
    try:
        import datasets  # noqa: F401
    except ImportError:
        parser.error("the example needs the datasets package: pip install datasets tensorboard")
    p = params.load("base", "styles", "lora", "train", "validation", "generate", "score")
    style, cfg = params.style(p, args.style), params.train_for(p, args.style)
    truth = ground_truth.load_truth(TRUTH)
    if truth is None or args.style not in truth.looks:
        parser.error(f"no ground truth for {args.style} in {TRUTH}: run `make repro` first (the sample stage writes it)")
    q = p.model_copy(update={"lora": p.lora.model_copy(update={"targets": PEER_TARGETS, "alpha": p.lora.rank})})
    results = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "style": args.style,
               "settings": {"lr": cfg.lr, "batch_size": cfg.batch_size, "rank": p.lora.rank,
                                                  "resolution": p.base.resolution, "targets": PEER_TARGETS}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        loras, seconds = {}, {}
        for name, lora in (("stylemix", q), ("stylemix, its default targets", p)):
            started = time.perf_counter()  # encode@S (the VAE and text encoder, once) and train@S
            encode_style(args.style, style, p.base, out=tmp / f"latents-{name}", heldout=params.validation_split(p, args.style),
                         seed=p.validation.seed)
            summary = train_style(args.style, lora, out=tmp / name, ckpt_root=tmp / f"ckpt-{name}", logs=tmp / f"logs-{name}",
                                  latents=tmp / f"latents-{name}")
            seconds[name], loras[name], steps = time.perf_counter() - started, tmp / name / args.style, summary["steps"]
        names = LatentCache(latents_file(args.style, tmp / "latents-stylemix")).files  # what train@S trained on
        results["images"] = len(names)
        imagefolder(args.style, training_captions(args.style, style), names, tmp / "data")
        seconds["peer"] = run_peer(script, tmp / "data", tmp / "peer", p, cfg, steps)
        loras["peer"] = tmp / "peer"
        scorer = scoring.load_scorer(p.score)
        verdict = judge(p, args.style, style.trigger, loras, scorer, truth)
    results["steps"] = steps
    results["runs"] = {name: {"wall_s": seconds.get(name)} | verdict[name] for name in ("peer", "stylemix", "stylemix, its default targets")}
    results["runs"]["base"] = verdict["base"]
    results["time_ratio_stylemix_to_peer"] = seconds["stylemix"] / seconds["peer"]
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name, run in results["runs"].items():
        print(f"{name:32s} " + "  ".join(f"{k} {v:.3f}" for k, v in run.items() if v is not None))


if __name__ == "__main__":
    main()
