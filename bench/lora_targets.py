"""Benchmark: where a style LoRA should live, and of which type. Trains demo styles with each
`lora.targets` setting (and LoCon's `lora.conv_rank`, and DoRA, LoHa, LoKr) on the workspace's encoded demo
data, with the demo's training params, and measures what each learned, all as ratios to the same
run's base model or default:

- val_gain:   1 - held-out loss / the base's held-out loss, on the style's own held-out images;
- sim_gain:   style similarity of drawings with the trigger minus the base's (the demo scorer);
- clip_kept:  CLIP score of those drawings / the base's (how much of the prompt's content is left);
- size_ratio, step_ratio: file size and training time per step / the demo default's.

    make repro && python bench/lora_targets.py     # writes bench/results/lora_targets.json
    python bench/lora_targets.py --out bench/results/lora_types.json dora loha lokr   # some, and the default

The block candidates are the tiny model's decoder attentions, up_blocks.0 (4x4 latents) to
up_blocks.2 (16x16); the `style` and `content` presets name up_blocks.1's (stylemix.adapters.lora_files.block_preset).
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stylemix import params  # noqa: E402
from stylemix.adapters.lora_files import WEIGHTS, block_layers, block_preset  # noqa: E402
from stylemix.drawing.drawer import Drawer  # noqa: E402
from stylemix.evaluation import scoring  # noqa: E402
from stylemix.models.base_model import load_pipeline  # noqa: E402
from stylemix.paths import FILTERED  # noqa: E402
from stylemix.training.loop import train_style  # noqa: E402

STYLES = ["openmoji", "lineart"]
VARIANTS = {  # name -> lora params over the demo's; a block name: every `all` layer of that attention
    "default": {},
    "all": {"targets": "all"},
    "up_blocks.0.attentions.0": {"targets": "up_blocks.0.attentions.0"},
    "up_blocks.0.attentions.1": {"targets": "up_blocks.0.attentions.1"},
    "up_blocks.1.attentions.0": {"targets": "up_blocks.1.attentions.0"},  # the `content` preset on this UNet
    "up_blocks.1.attentions.1": {"targets": "up_blocks.1.attentions.1"},  # the `style` preset
    "up_blocks.2.attentions.1": {"targets": "up_blocks.2.attentions.1"},
    "conv_rank 4": {"conv_rank": 4},
    "dora": {"type": "dora"},
    "dora + conv_rank 4": {"type": "dora", "conv_rank": 4},
    "loha": {"type": "loha"},
    "lokr": {"type": "lokr"},
}
OUT = Path(__file__).parent / "results" / "lora_targets.json"


def drawings(drawer: Drawer, weights: dict, p: params.Params) -> list:
    return [drawer.draw(prompt, weights, seed, p.generate)[0] for prompt in p.generate.prompts for seed in p.generate.seeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", help=f"these and the default (none: all): {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if unknown := set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}; there are: {', '.join(VARIANTS)}")
    variants = {v: VARIANTS[v] for v in VARIANTS if not args.variants or v == "default" or v in args.variants}
    p = params.load("base", "styles", "lora", "train", "validation", "generate", "score")
    scorer = scoring.load_scorer(p.score)
    texts = scoring.embed_texts(scorer, [q for q in p.generate.prompts for _ in p.generate.seeds])
    refs = {s: scoring.style_reference(scorer, FILTERED / s) for s in STYLES}
    unet, rows = load_pipeline(p.base).unet, []
    with tempfile.TemporaryDirectory() as tmp:
        base = scoring.embed_images(scorer, drawings(Drawer(p.base, roots=()), {}, p))
        for variant, lora in variants.items():
            if str(lora.get("targets", "")).startswith("up_blocks"):
                lora = lora | {"targets": block_layers(unet, lora["targets"])}
            q = p.model_copy(update={"lora": p.lora.model_copy(update=lora)})
            root = Path(tmp) / variant.replace(" ", "_")
            drawer = None
            for style in STYLES:
                started = time.perf_counter()
                summary = train_style(style, q, out=root / "lora", ckpt_root=root / "ckpt", logs=root / "logs")
                seconds = time.perf_counter() - started
                drawer = drawer or Drawer(p.base, roots=(root / "lora",))
                images = scoring.embed_images(scorer, drawings(drawer, {style: 1.0}, p))
                rows.append({"variant": variant, "style": style, "steps": summary["steps"],
                             "step_s": seconds / summary["steps"], "size_mb": (root / "lora" / style / WEIGHTS).stat().st_size / 1e6,
                             "val_gain": 1 - summary["val_loss"] / summary["val_loss_base"],
                             "sim_gain": float((images @ refs[style]).mean() - (base @ refs[style]).mean()),
                             "clip_kept": float((images * texts).sum(-1).mean() / (base * texts).sum(-1).mean())})
                print(json.dumps(rows[-1]), flush=True)
    default = {r["style"]: r for r in rows if r["variant"] == "default"}
    for r in rows:
        r["size_ratio"] = r["size_mb"] / default[r["style"]]["size_mb"]
        r["step_ratio"] = r["step_s"] / default[r["style"]]["step_s"]
    mean = {v: {k: sum(r[k] for r in rows if r["variant"] == v) / len(STYLES)
                for k in ("val_gain", "sim_gain", "clip_kept", "size_ratio", "step_ratio")} for v in variants}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                               "styles": STYLES, "presets": {k: block_preset(unet, k) for k in params.BLOCK_PRESETS},
                               "rows": rows, "mean": mean}, indent=2) + "\n")
    for v, m in mean.items():
        print(f"{v:26s} " + "  ".join(f"{k} {x:.3f}" for k, x in m.items()))


if __name__ == "__main__":
    main()
