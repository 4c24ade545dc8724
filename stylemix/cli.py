"""The `stylemix` command: what a person types beside `dvc repro`, one subcommand per module in
stylemix/commands/. Only the chosen subcommand is imported, so `stylemix --help` answers at once
and `stylemix prompts` never loads torch."""
import argparse
import importlib
import sys

from stylemix.errors import run_stage

COMMANDS = {
    "draw": "draw a prompt with any trained styles and combinations at any weights",
    "prompts": "show a style's captions exactly as training reads them",
    "sweep": "heatmaps and an image grid over two swept params, from `dvc exp show`",
    "explore": "a pair's mixing lab (explore@P): its Pareto front, and a point saved as a combination",
    "export": "a checkpoint with a style or combination baked in, in the single-file layout (--fused)",
    "publish": "upload a style or combination to the Hugging Face Hub with a model card (--dry-run shows it)",
    "ui": "a local web UI: draw with weight sliders, X/Y grids, compare, save a mix to params.yaml",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="stylemix", description="Teach Stable Diffusion drawing styles: "
                                         "the commands beside the DVC pipeline (`dvc repro` runs the pipeline).")
        commands = parser.add_subparsers(metavar="COMMAND", required=True)
        for name, summary in COMMANDS.items():
            commands.add_parser(name, help=summary)
        parser.parse_args(argv)  # prints the help, or the error for an unknown command, and exits
        return
    name = argv[0]
    module = importlib.import_module(f"stylemix.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"stylemix {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    run_stage(lambda: module.run(args))


if __name__ == "__main__":
    main()
