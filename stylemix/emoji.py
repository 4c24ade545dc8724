"""The demo's art: six published emoji sets that draw the same subjects in six looks, committed in
stylemix/emoji_sets/ (one IconifyJSON file a look, the subset `python -m stylemix.demo.fetch_emoji` took
from the npm packages, with each set's licence) and rendered here with resvg at any size.

The SVG text is kept rather than rendered pictures: one file serves the CPU demo at 64 px and a
real SD 1.5 / SDXL run at 512 or 1024 px, and it is the artists' own work, byte for byte.
"""
import io
import json
from functools import cache
from pathlib import Path

from PIL import Image

from stylemix.errors import StyleMixError
from stylemix.images import on_white

SETS = Path(__file__).parent / "emoji_sets"
# look -> (npm package, exact version, what it looks like); the order is the matrix's.
LOOKS = {
    "noto": ("@iconify-json/noto", "1.2.9", "Google Noto: glossy, shaded"),
    "twemoji": ("@iconify-json/twemoji", "1.2.5", "Twemoji: flat, bold shapes"),
    "fluent": ("@iconify-json/fluent-emoji", "1.2.7", "Fluent colour: soft gradients"),
    "flat": ("@iconify-json/fluent-emoji-flat", "1.2.6", "Fluent flat: Fluent's shapes in flat colour"),
    "lineart": ("@iconify-json/fluent-emoji-high-contrast", "1.2.6", "Fluent high contrast: black line art on white"),
    "openmoji": ("@iconify-json/openmoji", "1.2.29", "OpenMoji: thin black outlines, pastel fills"),
}
# The demo's held-out subjects (params.yaml's sample.heldout): no LoRA trains on them, and the base
# never sees them in a LoRA's look (stylemix.demo.pretrain), so their real pictures are the ground truth.
HELDOUT = ("zebra", "rocket", "octopus", "red-apple", "pizza", "teapot", "turtle", "tent", "crab", "banana", "frog", "taxi")


@cache
def icon_set(look: str) -> dict:
    """The committed IconifyJSON subset of one look."""
    path = SETS / f"{look}.json"
    if look not in LOOKS:
        raise StyleMixError(f"unknown emoji look {look!r}; the demo's looks are: {', '.join(LOOKS)}")
    if not path.is_file():
        raise StyleMixError(f"{path} missing: restore it from git, or run `python -m stylemix.demo.fetch_emoji` (needs npm)")
    return json.loads(path.read_text())


def subjects() -> list[str]:
    """Every subject of the committed sets (iconify names, e.g. alarm-clock), in a fixed order."""
    return sorted(icon_set("noto")["icons"])


def words(subject: str) -> str:
    """A subject's name as a caption says it: alarm-clock -> alarm clock."""
    return subject.replace("-", " ")


def svg(look: str, subject: str) -> str:
    """One emoji as a standalone SVG document, centred in a square."""
    data = icon_set(look)
    icon = data["icons"].get(subject)
    if icon is None:
        raise StyleMixError(f"emoji subject {subject!r} is not in {SETS / (look + '.json')}; `stylemix.emoji.subjects()` "
                            "lists the committed ones")
    left, top = icon.get("left", data.get("left", 0)), icon.get("top", data.get("top", 0))
    width, height = icon.get("width", data.get("width", 16)), icon.get("height", data.get("height", 16))
    side = max(width, height)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left - (side - width) / 2:g} {top - (side - height) / 2:g} {side:g} {side:g}">{icon["body"]}</svg>')


def render(look: str, subject: str, size: int, zoom: float = 1.0, aspect: float = 1.0) -> Image.Image:
    """The emoji as a transparent RGBA picture whose short side is `size` px, centred on a canvas of
    `aspect` (width / height), at `zoom` (2: twice as large, cropped; 0.5: half, with a margin)."""
    import resvg_py

    side = max(1, round(size * zoom))
    png = resvg_py.svg_to_bytes(svg_string=svg(look, subject), width=side, height=side)
    drawn = Image.open(io.BytesIO(bytes(png))).convert("RGBA")
    canvas = Image.new("RGBA", (round(size * aspect), size) if aspect >= 1 else (size, round(size / aspect)), (0, 0, 0, 0))
    canvas.paste(drawn, ((canvas.width - side) // 2, (canvas.height - side) // 2))
    return canvas


def random_view(look: str, subject: str, size: int, rng, zoom: tuple[float, float] = (0.5, 1.7), shift: float = 0.125):
    """The emoji on white at a random zoom (log-uniform in `zoom`) and offset (up to `shift` of the side),
    `size` px square: what the pretraining scripts learn from, since the pipeline draws any framing."""
    import numpy as np

    scale = float(np.exp(rng.uniform(np.log(zoom[0]), np.log(zoom[1]))))
    big = on_white(render(look, subject, 2 * size, scale))  # rendered at twice the size, then averaged down
    shifted = Image.new("RGB", big.size, "white")
    shifted.paste(big, tuple(int(v) for v in rng.integers(-int(shift * 2 * size), int(shift * 2 * size) + 1, 2)))
    return np.asarray(shifted.resize((size, size), Image.Resampling.BOX))
