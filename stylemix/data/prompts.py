"""Where captions meet trigger words: manual overrides win over machine captions, then the
style's template puts the trigger in ("anistyle, a portrait of ..." or "..., drawn by KSH"); for
tag captions, the seeded shuffled variants training reads (`tags`).
`stylemix prompts STYLE` shows the captions training will read."""
import random
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


def tag_variants(caption: str, cfg: params.Tags, key: str) -> tuple[list[str], int]:
    """(cfg.variants variants of a comma-separated caption, how many dropout left empty): the first
    keep_tokens tags stay in place, each other tag is left out with probability cfg.dropout, the
    rest are shuffled. Seeded by (cfg.seed, key), so one image's variants never depend on another's.
    A variant that dropout would leave empty keeps every tag instead."""
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    kept, rest = tags[: cfg.keep_tokens], tags[cfg.keep_tokens :]
    rng = random.Random(f"{cfg.seed}:{key}")
    variants, emptied = [], 0
    for _ in range(cfg.variants):
        chosen = [t for t in rest if rng.random() >= cfg.dropout]
        if cfg.shuffle:
            rng.shuffle(chosen)
        emptied += not (kept or chosen) and bool(tags)
        variants.append(", ".join(kept + chosen) if kept or chosen else ", ".join(tags))
    return variants, emptied
