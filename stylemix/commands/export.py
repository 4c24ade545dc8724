"""Export a trained style or combination as one checkpoint with the LoRA baked in, in the
single-file layout (the original SD 1.5 / SDXL names) that A1111, ComfyUI and diffusers'
`from_single_file` read: for tools that take checkpoints only.

    stylemix export openmoji --fused exports/openmoji.safetensors
    stylemix export flat_openmoji --fused exports/mix.safetensors --weight 0.8 --dtype float32

A model of another shape than SD 1.5 / SDXL (the demo's tiny) gets its configs beside the file,
OUT.configs/, which `base.config` takes to load it back.
"""
import argparse
from pathlib import Path

from stylemix import params
from stylemix.errors import StyleMixError

DTYPE_CHOICES = ("float16", "bfloat16", "float32")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a trained style or merged combination")
    parser.add_argument("--fused", type=Path, required=True, metavar="OUT.safetensors", help="the checkpoint to write")
    parser.add_argument("--weight", type=float, default=1.0, help="the LoRA's strength baked in (default 1)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="float16",
                        help="weights' precision in the file (default float16, as community checkpoints: half the size)")


def run(args: argparse.Namespace) -> None:
    from stylemix.drawing.drawer import Drawer, find_adapter
    from stylemix.families import FLOW, NAMES
    from stylemix.models import single_file
    from stylemix.models.base_model import DTYPES, architecture, family
    from stylemix.outputs import atomic_dir

    out = args.fused
    if out.suffix != ".safetensors":
        raise StyleMixError(f"--fused {out}: name the checkpoint OUT.safetensors")
    folder = find_adapter(args.name)
    base = params.load("base").base
    if (kind := family(base)) in FLOW:
        raise StyleMixError(f"export --fused writes SD 1.5 / SDXL's single-file layout; {NAMES[kind]}'s is not written yet: "
                            f"use the LoRA folder {folder} with the base model")
    drawer = Drawer(base)
    info = drawer.infos([args.name])[args.name]  # loads it; fuse() then bakes it in
    drawer.fuse({args.name: args.weight})
    arch = architecture(drawer.pipe)
    metadata = {"format": "pt", "stylemix.fused": f"{args.name}={args.weight:g}", "stylemix.models.base_model": base.model,
                "stylemix.architecture": arch}
    load = f"base.model: {out}"
    configs = out.with_suffix(".configs")
    if not single_file.is_real_shape(drawer.pipe, arch):  # the configs first: a finished file always has them
        with atomic_dir(configs) as tmp:
            single_file.save_configs(drawer.pipe, tmp)
        load += f" with base.config: {configs}"
    size = single_file.save(drawer.pipe, out, DTYPES[args.dtype], metadata)
    print(f"export: {args.name} at {args.weight:g} baked into {out} ({size / 2**20:.1f} MiB, {arch}, {args.dtype}); "
          f"load it with {load}")
    if info.get("tokens"):
        print(f"export: {args.name}'s new tokens ({', '.join(info['tokens'])}) are not in the checkpoint (a single file has "
              f"no tokenizer): load them from {folder}/embeddings/ as A1111 embeddings")
