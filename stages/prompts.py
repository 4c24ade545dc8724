"""Where captions meet trigger words: manual overrides win over machine captions, then the
style's template puts the trigger in ("anistyle, a portrait of ..." or "..., drawn by KSH").
Run `python -m stages.prompts STYLE` to see the captions training will read."""
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from stages import params
from stages.caption import CAPTIONS
from stages.errors import StyleMixError, run_stage
from stages.outputs import read_jsonl


def with_trigger(caption: str, style: params.Style) -> str:
    return style.template.format(trigger=style.trigger, caption=caption.strip()).strip(" ,")


def training_captions(name: str, style: params.Style, captions: Path = CAPTIONS) -> dict[str, str]:
    """file_name -> the caption training sees, for every captioned image of the style."""
    path = captions / name / "metadata.jsonl"
    if not path.is_file():
        raise StyleMixError(f"style {name}: no captions ({path} missing); run `dvc repro caption@{name}` first")
    rows = read_jsonl(path)
    overrides = {Path(key).stem: text for key, text in style.overrides.items()}
    unused = set(overrides) - {Path(r["file_name"]).stem for r in rows}
    if unused:
        print(f"warning: styles.{name}.overrides names images not among its filtered images: {', '.join(sorted(unused))}")
    return {r["file_name"]: with_trigger(overrides.get(Path(r["file_name"]).stem, r["text"]), style) for r in rows}


def main() -> None:
    if len(sys.argv) != 2:
        raise StyleMixError("usage: python -m stages.prompts STYLE")
    p = params.load("styles")
    name = sys.argv[1]
    table = Table("file", "training caption", title=f"{name}: captions as training reads them")
    for file_name, text in training_captions(name, params.style(p, name)).items():
        table.add_row(file_name, text)
    Console().print(table)


if __name__ == "__main__":
    run_stage(main)
