"""Publish a trained style or combination to the Hugging Face Hub: the LoRA in both layouts, its
tokens, sample images from the report and a model card (base model, trigger words, training
settings, scores, validation loss).

    stylemix publish openmoji --dry-run hub/openmoji     # writes the exact folder, uploads nothing
    stylemix publish openmoji --repo you/openmoji-lora [--private]
"""
import argparse
import tempfile
from pathlib import Path

from stylemix import params
from stylemix.commands.publishing import build, upload
from stylemix.drawing.drawer import Drawer, find_adapter
from stylemix.errors import StyleMixError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a trained style or merged combination")
    parser.add_argument("--repo", help="the hub repo, user/name (created when missing)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", type=Path, metavar="FOLDER", help="write the folder it would upload, and stop")


def run(args: argparse.Namespace) -> None:
    folder = find_adapter(args.name)
    Drawer(params.load("base").base).infos([args.name])  # loads it into base.model: a file no layer takes stops here
    if args.dry_run:
        build(args.name, folder, args.dry_run)
        print(f"publish: {args.dry_run}/ is what would be uploaded (README.md is the model card)")
        return
    if not args.repo or "/" not in args.repo:
        raise StyleMixError("--repo user/name is needed to publish (or --dry-run FOLDER to look first)")
    with tempfile.TemporaryDirectory() as tmp:
        url = upload(build(args.name, folder, Path(tmp) / args.name), args.repo, args.private, args.name)
    print(f"publish: {args.name} -> {url}")
