"""Every caption of a style exactly as training will read it: manual overrides applied, trigger
word placed by the style's template, and with tag shuffling or dropout on (`tags`), each variant.

    stylemix prompts openmoji
"""
import argparse

from rich.console import Console
from rich.table import Table

from stylemix import params
from stylemix.data.prompts import tag_variants, training_captions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("style", help="a style in params.yaml's styles")


def run(args: argparse.Namespace) -> None:
    p = params.load("styles", "tags")
    variants = p.tags.active
    table = Table("file", "training caption", *(["variants (one an epoch)"] if variants else []),
                  title=f"{args.style}: captions as training reads them")
    for file_name, text in training_captions(args.style, params.style(p, args.style)).items():
        table.add_row(file_name, text, *(["\n".join(tag_variants(text, p.tags, file_name)[0])] if variants else []))
    Console().print(table)
