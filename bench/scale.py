"""Benchmark: a style of thousands of images through filter, caption (sidecar), encode and one epoch
of training, at the demo's settings (the pretrained tiny model, 64 px, aspect-ratio buckets, batch 4).
Per size and phase: seconds per image and the phase's peak resident memory above the process's
memory before it (Linux /proc counters, as bench/memory.py). Each phase runs in its own process.
The baseline is the same run's smallest size: ratios near 1 for seconds per image say time grows
linearly. Training reads the latent cache memory-mapped, a batch at a time: its resident peak grows
by the pages of the file it has read (the kernel's page cache, given back under pressure), its
anonymous memory (anon_peak_gb, sampled every step) should not grow with the style at all.

Synthetic images (random shapes on a plain ground, square, 16:9 and 2:3, each with a sidecar caption)
stand in for a user's folder: they pass the blur filter and are no near-duplicates of each other.

    python bench/scale.py                      # 1,000 and 5,000 images: ~15 min on 2 cores
    python bench/scale.py --images 40,80 --out /tmp/scale.json
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results" / "scale.json"
PHASES = ("filter", "caption", "encode", "train")
SHAPES = [(96, 96), (128, 72), (64, 96)]  # square, 16:9, 2:3
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40), "black": (15, 15, 15)}


def make_style(folder: Path, count: int) -> None:
    import cv2
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    for i in range(count):
        w, h = SHAPES[i % len(SHAPES)]
        img = np.full((h, w, 3), rng.integers(120, 255, 3), np.uint8)
        drawn = rng.choice(len(names), 3, replace=False)
        for k in drawn:  # outlined shapes inside the frame: sharp enough for the blur filter
            r = int(rng.integers(8, 20))
            x, y = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
            colour = COLOURS[names[k]]
            if rng.random() < 0.5:
                cv2.circle(img, (x, y), r, colour, -1)
                cv2.circle(img, (x, y), r, (0, 0, 0), 1)
            else:
                cv2.rectangle(img, (x - r, y - r), (x + r, y + r), colour, -1)
                cv2.rectangle(img, (x - r, y - r), (x + r, y + r), (0, 0, 0), 1)
        cv2.imwrite(str(folder / f"img_{i:05d}.png"), img[..., ::-1])
        (folder / f"img_{i:05d}.txt").write_text(f"{', '.join(names[k] for k in drawn)} shapes on a plain ground\n")


def settings(work: Path, model: Path):
    from stylemix import params

    return params.validate({
        "base": {"model": str(model), "resolution": 64, "buckets": {"enabled": True, "step": 16}},
        "styles": {"big": {"source": str(work / "src"), "trigger": "bigstyle"}},
        "lora": {"rank": 8, "alpha": 8, "targets": "attn"},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 1_000_000, "validation_steps": 1,
                  "validation_prompts": ["a cat"]},
    })


def phase(name: str, work: Path) -> dict:
    """One phase in this process: its seconds, images it handled and peak memory above the start."""
    from memory import reset_peak, status_gb

    from stages.caption import caption_style
    from stages.encode import encode_style
    from stages.filter import filter_style
    from stylemix import params
    from stylemix.training.loop import train_style

    p = settings(work, work / "tiny")
    style = p.styles["big"]
    before, anon_before = status_gb("VmRSS"), status_gb("RssAnon")
    reset_peak()
    started = time.perf_counter()
    if name == "filter":
        images = filter_style("big", style, params.Filter(), p.base, work / "filtered", work / "reports")["kept"]
    elif name == "caption":
        images = len(caption_style("big", params.Caption(), work / "filtered", work / "captions"))
    elif name == "encode":
        images = len(encode_style("big", style, p.base, work / "filtered", work / "captions", work / "latents"))
    else:  # one epoch; timed from the first step to the last, so model loading and saving do not count
        stamps, peaks, anon = [], [], []

        def on_step(step, _):
            stamps.append(time.perf_counter())
            peaks.append(status_gb("VmHWM"))
            anon.append(status_gb("RssAnon"))
        summary = train_style("big", p, on_step, out=work / "lora", ckpt_root=work / "ckpt", logs=work / "logs",
                              latents=work / "latents")
        images = (summary["steps"] - 1) * p.train.batch_size
        return {"s": stamps[-1] - stamps[0], "images": images, "s_per_image": (stamps[-1] - stamps[0]) / images,
                "peak_gb": peaks[-1] - before, "anon_peak_gb": max(anon) - anon_before, "steps": summary["steps"],
                "cache_gb": (work / "latents/big/latents.safetensors").stat().st_size / 2**30}
    seconds = time.perf_counter() - started
    return {"s": seconds, "images": images, "s_per_image": seconds / images, "peak_gb": status_gb("VmHWM") - before}


def run_size(count: int, root: Path) -> dict:
    from stylemix.models.base_model import copy_pretrained_tiny

    work = root / str(count)
    make_style(work / "src", count)
    copy_pretrained_tiny(work / "tiny")
    rows = {}
    for name in PHASES:
        result = subprocess.run([sys.executable, __file__, "--phase", name, "--work", str(work)], capture_output=True,
                                text=True, timeout=3600, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        if result.returncode:
            raise SystemExit(f"{name} at {count} images failed:\n{result.stderr[-3000:]}")
        rows[name] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{count} images, {name}: {rows[name]['s_per_image'] * 1000:.2f} ms/image, peak +{rows[name]['peak_gb']:.3f} GB",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="1000,5000", help="style sizes, comma-separated; the first is the baseline")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # one phase, in its own process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.work)))
        return
    sizes = [int(n) for n in args.images.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as root:
        results = {str(n): run_size(n, Path(root)) for n in sizes}
    base = results[str(sizes[0])]
    ratios = {str(n): {name: {"s_per_image": row["s_per_image"] / base[name]["s_per_image"],
                              "peak_gb": row["peak_gb"] / max(base[name]["peak_gb"], 1e-6)}
                       for name, row in results[str(n)].items()} for n in sizes[1:]}
    import torch

    report = {"setup": {"images": sizes, "phases": list(PHASES), "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "cpus": os.cpu_count()},
              "results": results, f"ratios_to_{sizes[0]}": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
