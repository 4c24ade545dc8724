"""Where captions meet trigger words: manual overrides win over machine captions, then the
style's template puts the trigger in ("anistyle, a portrait of ..." or "..., drawn by KSH").
`stylemix prompts STYLE` shows the captions training will read."""
from pathlib import Path

from stylemix import params
from stylemix.errors import StyleMixError
from stylemix.outputs import read_jsonl
from stylemix.paths import CAPTIONS


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


def triggered(prompt: str, info: dict) -> str:
    """The prompt with the LoRA's trigger word(s), placed as the style's template says."""
    triggers = list(info.get("triggers", {}).values()) or [info["trigger"]]
    template = info.get("template", "{trigger}, {caption}")
    return template.format(trigger=", ".join(triggers), caption=prompt)
