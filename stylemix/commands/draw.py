"""Pictures on demand, outside the pipeline: a prompt, any trained styles or combinations with
weights, a seed, an output path. Settings not given come from params.yaml's `generate`.

    stylemix draw "a cat sitting by a window" watercolor=0.6 pixelart=0.4 --seed 3 -o cat.png
"""
import argparse
from pathlib import Path

from stylemix import params
from stylemix.base_model import default_device, load_pipeline
from stylemix.errors import StyleMixError
from stylemix.lora_files import read_info_for
from stylemix.paths import LORAS, MERGED
from stylemix.prompts import triggered
from stylemix.render import SCHEDULERS, render
from stylemix.tokens import load_tokens


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
    pipe = load_pipeline(p.base.model, p.base.revision, p.base.dtype, p.base.vae).to(default_device())
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SCHEDULERS[cfg.scheduler](pipe.scheduler.config)
    names, weights, triggers = [], [], {}
    for name, weight in map(parse_lora, args.loras):
        folder = next((f for f in (LORAS / name, MERGED / name) if f.is_dir()), None)
        if folder is None:
            raise StyleMixError(f"no trained style or merged combination named {name!r} in {LORAS}/ or {MERGED}/")
        info = read_info_for(folder, pipe)
        triggers |= info.get("triggers") or {name: info["trigger"]}
        pipe.load_lora_weights(folder, adapter_name=name)
        load_tokens(pipe, folder, list(info.get("tokens") or {}))
        names.append(name)
        weights.append(weight)
    if names:
        pipe.set_adapters(names, weights)
    text = triggered(args.prompt, {"triggers": triggers}) if triggers else args.prompt
    label = " + ".join(f"{n}={w:g}" for n, w in zip(names, weights)) or "base"
    image, meta = render(pipe, text, args.seed, cfg, p.base, label, args.prompt)
    image.save(args.out, pnginfo=meta)
    print(f"draw: {text!r} ({label}, seed {args.seed}) -> {args.out}")
