"""Pictures on demand, outside the pipeline: a prompt, any trained styles or combinations with
weights, a seed, an output path. Settings not given come from params.yaml's `generate`.

    stylemix draw "a cat sitting by a window" watercolor=0.6 pixelart=0.4 --seed 3 -o cat.png
"""
import argparse
from pathlib import Path

from stylemix import params
from stylemix.drawing import Drawer
from stylemix.errors import StyleMixError


def parse_lora(spec: str) -> tuple[str, float]:
    name, _, weight = spec.partition("=")
    try:
        return name, float(weight or 1.0)
    except ValueError:
        raise StyleMixError(f"{spec!r}: write a LoRA as NAME or NAME=WEIGHT, e.g. watercolor=0.6") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt")
    parser.add_argument("loras", nargs="*", help="STYLE=WEIGHT or COMBO=WEIGHT (trained or merged)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--negative")
    parser.add_argument("-o", "--out", type=Path, default=Path("draw.png"))


def run(args: argparse.Namespace) -> None:
    p = params.load("base", "generate")
    cfg = p.generate.model_copy(update={k: v for k, v in (("steps", args.steps), ("negative_prompt", args.negative)) if v is not None})
    weights = dict(map(parse_lora, args.loras))
    image, meta = Drawer(p.base).draw(args.prompt, weights, args.seed, cfg)
    image.save(args.out, pnginfo=meta)
    label = " + ".join(f"{n}={w:g}" for n, w in weights.items()) or "base"
    print(f"draw: {args.prompt!r} ({label}, seed {args.seed}) -> {args.out}")
