"""Pictures on demand, outside the pipeline: a prompt, any trained styles or combinations with
weights, a seed, an output path. Settings not given come from params.yaml's `generate`.

    stylemix draw "a cat sitting by a window" openmoji=0.6 flat=0.4 --seed 3 -o cat.png
    stylemix draw --prompts shots.csv lineart=1 --fuse -o storyboard/
    stylemix draw "a cat" lineart=0.5 fluent=0.5 --blocks lineart=down:0,mid:0 --schedule fluent=0-0.6

A batch (`--prompts`) is a text file with one prompt per line, or a CSV with a `prompt` column and
optional `negative`, `seed` and `weights` (`openmoji=0.6 flat=0.4`, replacing the command
line's for that row); it draws into a folder, one PNG per row and index.jsonl, rows with the same
styles `--batch-size` at a time (default generate.batch_size). `--fuse` bakes the command line's
LoRAs into the weights once, so each drawing skips the adapters' extra work.

`--blocks NAME=SPEC` gives a LoRA a weight per UNet block (stylemix.adapters.block_weights): an LBW preset
(OUTALL), an LBW vector (1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1) or groups (text_encoder:1,down:0,mid:0,up:1).
`--schedule NAME=SPEC` changes its strength over the denoising steps (stylemix.adapters.schedules): a window
START-END (0-0.6: on for the first 60% of the steps) or FRACTION:MULTIPLIER points (0:1,0.5:1,0.8:0).
"""
import argparse
import csv
from itertools import groupby
from pathlib import Path

from more_itertools import chunked

from stylemix import params
from stylemix.drawing.drawer import Drawer, mix_label, parse_spec
from stylemix.errors import StyleMixError
from stylemix.outputs import atomic_dir, write_jsonl
from stylemix.progress import track


def parse_lora(spec: str) -> tuple[str, float]:
    name, _, weight = spec.partition("=")
    try:
        return name, float(weight or 1.0)
    except ValueError:
        raise StyleMixError(f"{spec!r}: write a LoRA as NAME or NAME=WEIGHT, e.g. openmoji=0.6") from None


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return int(text)


def read_batch(path: Path, seed: int, weights: dict[str, float]) -> list[dict]:
    """The rows of a prompts file: prompt, negative (None = params'), seed, weights."""
    if not path.is_file():
        raise StyleMixError(f"--prompts {path}: no such file")
    if path.suffix.lower() != ".csv":
        lines = [line.strip() for line in path.read_text().splitlines()]
        rows = [{"prompt": line} for line in lines if line and not line.startswith("#")]
    else:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and "prompt" not in rows[0]:
            raise StyleMixError(f"{path}: a CSV needs a `prompt` column (optional: negative, seed, weights)")
    if not rows:
        raise StyleMixError(f"{path}: no prompts in it")
    out = []
    for i, row in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
        try:
            own = dict(map(parse_lora, row["weights"].split())) if (row.get("weights") or "").strip() else None
            out.append({"prompt": row["prompt"], "negative": row.get("negative") or None,
                        "seed": int(row["seed"]) if (row.get("seed") or "").strip() else seed,
                        "weights": weights if own is None else own})
        except (StyleMixError, ValueError) as err:
            raise StyleMixError(f"{path} line {i}: {err}") from None
    return out


def drawn_rows(drawer: Drawer, rows: list[dict], cfg: params.Generate, blocks: dict, schedules: dict):
    """(row, image, metadata) for each row in order: consecutive rows with the same styles and negative
    prompt drawn together, `generate.batch_size` at a time."""
    for _, same in groupby(rows, key=lambda row: (sorted(row["weights"].items()), row["negative"])):
        for batch in chunked(same, cfg.batch_size):
            first = batch[0]
            own = cfg if first["negative"] is None else cfg.model_copy(update={"negative_prompt": first["negative"]})
            drawn = drawer.draw_batch([row["prompt"] for row in batch], first["weights"], [row["seed"] for row in batch], own,
                                      blocks=blocks, schedules=schedules)
            yield from ((row, image, meta) for row, (image, meta) in zip(batch, drawn))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", help="what to draw (or --prompts FILE)")
    parser.add_argument("loras", nargs="*", help="STYLE=WEIGHT or COMBO=WEIGHT (trained or merged)")
    parser.add_argument("--prompts", type=Path, help="a batch: .txt (a prompt per line) or .csv; -o is then a folder")
    parser.add_argument("--fuse", action="store_true", help="bake the LoRAs into the weights once (faster batches)")
    parser.add_argument("--blocks", action="append", default=[], metavar="NAME=SPEC",
                        help="a LoRA's weight per UNet block: an LBW preset, an LBW vector, or groups text_encoder:1,down:0,mid:0,up:1")
    parser.add_argument("--schedule", action="append", default=[], metavar="NAME=SPEC",
                        help="a LoRA's strength over the steps: START-END (on between) or FRACTION:MULTIPLIER,... points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=positive)
    parser.add_argument("--batch-size", type=positive, help="images drawn at once (default generate.batch_size)")
    parser.add_argument("--negative")
    parser.add_argument("-o", "--out", type=Path, help="the PNG (default draw.png), or a batch's folder (default drawn/)")


def run(args: argparse.Namespace) -> None:
    if args.prompts and args.prompt:  # argparse put the first STYLE=WEIGHT in `prompt`
        args.loras.insert(0, args.prompt)
    p = params.load("base", "generate")
    cfg = p.generate.model_copy(update={k: v for k, v in (("steps", args.steps), ("negative_prompt", args.negative),
                                                               ("batch_size", args.batch_size)) if v is not None})
    weights = dict(map(parse_lora, args.loras))
    blocks = dict(parse_spec("--blocks", spec, params.BlockSpec) for spec in args.blocks)
    schedules = dict(parse_spec("--schedule", spec, params.Schedule) for spec in args.schedule)
    if not args.prompts:
        if not args.prompt:
            raise StyleMixError("give a prompt, or --prompts FILE for a batch")
        rows = [{"prompt": args.prompt, "negative": None, "seed": args.seed, "weights": weights}]
    else:
        rows = read_batch(args.prompts, args.seed, weights)
    drawer = Drawer(p.base)
    if args.fuse:
        if any(row["weights"] != weights for row in rows):
            raise StyleMixError(f"--fuse draws every row with the command line's styles; {args.prompts} gives rows their "
                                f"own weights: drop --fuse or the CSV's weights column")
        if schedules:
            raise StyleMixError("--fuse bakes fixed weights into the model: a --schedule changes them every step; drop one")
        drawer.fuse(weights, blocks)
        blocks = {}
    draws = drawn_rows(drawer, rows, cfg, blocks, schedules)
    if not args.prompts:
        _, image, meta = next(draws)
        out = args.out or Path("draw.png")
        image.save(out, pnginfo=meta)
        print(f"draw: {args.prompt!r} ({mix_label(weights)}, seed {args.seed}) -> {out}")
        return
    out = args.out or Path("drawn")
    with atomic_dir(out) as tmp:
        index = []
        for i, (row, image, meta) in enumerate(track(draws, f"draw {args.prompts.name}", total=len(rows))):
            name = f"{i:04d}.png"
            image.save(tmp / name, pnginfo=meta)
            index.append({"file": name, "prompt": row["prompt"], "negative": row["negative"] or cfg.negative_prompt,
                          "seed": row["seed"], "weights": row["weights"], "fused": args.fuse})
        write_jsonl(tmp / "index.jsonl", index)
    print(f"draw: {len(rows)} images from {args.prompts} -> {out}/ (index.jsonl)")
