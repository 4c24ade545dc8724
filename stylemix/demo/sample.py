"""The offline demo's dataset: published emoji sets (stylemix.emoji) rendered into one folder per style,
and the ground truth (every held-out subject in every look).

Each style is one look, trained on its own seeded choice of the subjects that are not held out, so
no style ever sees a held-out subject (styles may share others). A picture's sidecar caption names its subject in words ("alarm clock"), never its look.
Every folder also gets the broken and awkward files the filter must survive. The line-art style comes
at three zooms with shot tokens in its captions (new concept tokens); the OpenMoji pictures on square,
16:9 and 2:3 canvases (for the aspect-ratio buckets).
"""
import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from stylemix import emoji
from stylemix.errors import StyleMixError
from stylemix.images import on_white
from stylemix.progress import track

# The storyboard idea on emoji: close-up, medium and full shot as zooms of the emoji on its canvas.
# params.yaml declares these tokens for styles.lineart.
FRAMED_STYLE = "lineart"
FRAMINGS = {"<cu_trg>": 1.35, "<ms_trg>": 1.0, "<fs_trg>": 0.6}
# The OpenMoji pictures come square, 16:9 and 2:3 (width / height), by picture number mod 4.
SHAPED_STYLE = "openmoji"
SHAPES = {1: 16 / 9, 3: 2 / 3}
EXTRA = 3  # pictures a style renders beyond its count, for the repaired edge cases (grey, transparent, rotated)


def check_heldout(heldout: list[str]) -> None:
    known = set(emoji.subjects())
    if unknown := [s for s in heldout if s not in known]:
        raise StyleMixError(f"sample.heldout names {', '.join(unknown)}, not among the {len(known)} committed emoji "
                            f"subjects (stylemix/emoji_sets/; e.g. {', '.join(sorted(known)[:3])})")


def style_subjects(slot: int, count: int, seed: int, heldout: list[str] = ()) -> list[str]:
    """The `count` + EXTRA subjects of the style in `slot` (its place in sample.styles): its own seeded
    choice among the subjects that are not held out."""
    rest = [s for s in emoji.subjects() if s not in set(heldout)]
    if count + EXTRA > len(rest):
        raise StyleMixError(f"sample.images_per_style = {count}: a style needs {count + EXTRA} subjects, and "
                            f"{len(rest)} of the committed ones are not held out; ask for fewer")
    return [rest[i] for i in np.random.default_rng([seed, slot]).permutation(len(rest))[: count + EXTRA]]


def framing(style: str, i: int) -> tuple[str | None, float, float]:
    """Picture i of a style: its shot token (or None), zoom and aspect ratio."""
    shot = list(FRAMINGS)[i % len(FRAMINGS)] if style == FRAMED_STYLE else None
    aspect = SHAPES.get(i % 4, 1.0) if style == SHAPED_STYLE else 1.0
    return shot, FRAMINGS.get(shot, 1.0), aspect


def plant_edge_cases(folder: Path, good: list[Image.Image], extra: list[tuple[Image.Image, str]],
                     rng: np.random.Generator) -> None:
    """Files the filter must reject or repair, so every demo run exercises them."""
    for i, img in enumerate(good[:3]):  # blurred copies: rejected by the Laplacian test
        flat = on_white(img)
        small = flat.reduce(max(1, max(flat.size) // 128))  # the same blur, at a fraction of a large image's cost
        blurred = cv2.GaussianBlur(np.asarray(small), (0, 0), max(small.size) / 8)
        Image.fromarray(blurred).resize(flat.size, Image.Resampling.BILINEAR).save(folder / f"blurred_{i}.png")
    buf = io.BytesIO()
    good[0].save(buf, format="PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file with an image's name\n")
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / "tiny.png")
    # Kept after repair: grayscale, transparent and EXIF-rotated files become upright RGB.
    (gray, _), (rgba, _), (upright, _) = extra
    on_white(gray).convert("L").save(folder / "gray.png")
    alpha = np.asarray(rgba.getchannel("A")).copy()
    alpha[: rgba.size[1] // 6] = 0  # a transparent band on top
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: viewers rotate the stored pixels 90 degrees clockwise
    on_white(upright).transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", exif=exif, quality=95)
    for name, (_, caption) in zip(("gray", "rgba", "rotated"), extra):
        (folder / f"{name}.txt").write_text(caption + "\n")


def build_style(style: str, folder: Path, count: int, seed: int, size: int = 128, heldout: list[str] = (),
                slot: int | None = None) -> None:
    """`count` pictures of the look `style` (transparent PNGs, `size` px on the short side) with their
    captions in `folder`, and the edge cases. `slot` (default: the look's place among all looks) picks
    the style's subjects."""
    slot = list(emoji.LOOKS).index(style) if slot is None else slot
    made = []
    for i, subject in enumerate(track(style_subjects(slot, count, seed, heldout), description=f"sample {style}")):
        shot, zoom, aspect = framing(style, i)
        caption = emoji.words(subject)
        made.append((emoji.render(style, subject, size, zoom, aspect), f"{shot}, {caption}" if shot else caption))
    for i, (img, caption) in enumerate(made[:count]):
        img.save(folder / f"{style}_{i:03d}.png")
        (folder / f"{style}_{i:03d}.txt").write_text(caption + "\n")
    plant_edge_cases(folder, [img for img, _ in made[:count]], made[count:], np.random.default_rng([seed, slot]))


def build_truth(folder: Path, heldout: list[str], size: int) -> None:
    """Every held-out subject in every look, flattened on white: folder/<look>/<subject>.png with its caption."""
    for look in emoji.LOOKS:
        (folder / look).mkdir(parents=True)
        for subject in heldout:
            on_white(emoji.render(look, subject, size)).save(folder / look / f"{subject}.png")
            (folder / look / f"{subject}.txt").write_text(emoji.words(subject) + "\n")
