"""Every caption of a style exactly as training will read it: manual overrides applied, trigger
word placed by the style's template.

    stylemix prompts watercolor
"""
import argparse

from rich.console import Console
from rich.table import Table

from stylemix import params
from stylemix.prompts import training_captions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("style", help="a style in params.yaml's styles")


def run(args: argparse.Namespace) -> None:
    p = params.load("styles")
    table = Table("file", "training caption", title=f"{args.style}: captions as training reads them")
    for file_name, text in training_captions(args.style, params.style(p, args.style)).items():
        table.add_row(file_name, text)
    Console().print(table)
