"""Export a trained style or combination as one checkpoint with the LoRA baked in, in the
single-file layout that A1111, ComfyUI and diffusers' `from_single_file` read: for tools that take
checkpoints only. SD 1.5 / SDXL: the whole model under the original names; FLUX.1 / SD 3.5: the
transformer alone in its makers' layout (what ComfyUI loads from models/diffusion_models/), beside
the base model's own VAE and text encoders.

    stylemix export openmoji --fused exports/openmoji.safetensors
    stylemix export flat_openmoji --fused exports/mix.safetensors --weight 0.8 --dtype float32

A model of another shape than the real ones (the demo's tiny models) gets its configs beside the
file, OUT.configs/, which `base.config` takes to load it back.
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
    from stylemix.families import FLOW
    from stylemix.models import flow_files, single_file
    from stylemix.models.base_model import DTYPES, architecture
    from stylemix.outputs import atomic_dir
    from stylemix.paths import BASE_DIR

    out = args.fused
    if out.suffix != ".safetensors":
        raise StyleMixError(f"--fused {out}: name the checkpoint OUT.safetensors")
    folder = find_adapter(args.name)
    base = params.load("base").base
    drawer = Drawer(base)
    info = drawer.infos([args.name])[args.name]  # loads it; fuse() then bakes it in
    drawer.fuse({args.name: args.weight})
    arch = architecture(drawer.pipe)
    metadata = {"format": "pt", "stylemix.fused": f"{args.name}={args.weight:g}", "stylemix.models.base_model": base.model,
                "stylemix.architecture": arch}
    load = f"base.model: {out}"
    configs = out.with_suffix(".configs")
    flow = arch in FLOW
    real = flow_files.real_model(drawer.pipe.transformer, single_file.CONFIGS) if flow else single_file.is_real_shape(drawer.pipe, arch)
    if not real:  # the configs first: a finished file always has them
        with atomic_dir(configs) as tmp:
            single_file.save_configs(drawer.pipe, tmp)
        load += f" with base.config: {configs}"
    if flow:  # the file holds the transformer: the VAE and text encoders stay the base model's
        if not real or base.model != flow_files.MODELS[real][1]:
            load += f" and base.components: {BASE_DIR if params.model_kind(base.model) == 'tiny' else base.model}"
        size = flow_files.save(drawer.pipe.transformer, out, DTYPES[args.dtype], metadata)
    else:
        size = single_file.save(drawer.pipe, out, DTYPES[args.dtype], metadata)
    print(f"export: {args.name} at {args.weight:g} baked into {out} ({size / 2**20:.1f} MiB, {arch}, {args.dtype}); "
          f"load it with {load}")
    if info.get("tokens"):
        print(f"export: {args.name}'s new tokens ({', '.join(info['tokens'])}) are not in the checkpoint (a single file has "
              f"no tokenizer): load them from {folder}/embeddings/ as A1111 embeddings")
