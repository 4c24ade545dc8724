"""The offline demo's dataset: public-domain photos that ship inside scikit-image, stylized with
OpenCV, one folder per style. Each image gets a sidecar caption; every folder also gets the broken
and awkward files the filter must survive. The sketch style comes at three camera framings with
shot tokens in its captions (new concept tokens); the watercolors in three aspect ratios (for the
aspect-ratio buckets)."""
import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

from stylemix.progress import track

# (loader, what the photo shows, its subject in a word or two): the sidecar caption describes
# content, never style. The pretrained tiny model (stylemix.pretrain) learned these same photos.
PHOTOS = [
    (data.astronaut, "an astronaut in a white spacesuit in front of a flag", "an astronaut"),
    (data.chelsea, "a tabby cat with green eyes", "a cat"),
    (data.coffee, "a cup of coffee on a saucer", "a cup of coffee"),
    (data.rocket, "a rocket on a launch pad under a blue sky", "a rocket"),
    (lambda: data.stereo_motorcycle()[0], "a motorcycle parked in a workshop", "a motorcycle"),
    (data.camera, "a man standing behind a camera on a tripod", "a cameraman"),
    (data.hubble_deep_field, "galaxies scattered across deep space", "galaxies"),
    (data.coins, "old coins laid out in rows", "old coins"),
]


# Each style must be unmistakable at the demo's 64 px, or a LoRA that learned nothing looks the
# same as one that learned: pale washes, flat vivid colours with outlines, ink lines, big pixels.
def watercolor(rgb: np.ndarray) -> np.ndarray:
    washed = cv2.stylization(rgb, sigma_s=60, sigma_r=0.45)
    hsv = cv2.cvtColor(washed, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] *= 0.75  # thinned pigment
    washed = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    h, w = rgb.shape[:2]
    rng = np.random.default_rng(0)
    blotches = cv2.resize(rng.normal(0, 10, (h // 8 + 1, w // 8 + 1)).astype(np.float32), (w, h))
    paper = (blotches + rng.normal(0, 2.5, (h, w)))[..., None]  # fine grain: the paper is sharp, the wash is not
    return np.clip(washed * 0.55 + 255 * 0.45 + paper, 0, 255).astype(np.uint8)  # on white paper


def cartoon(rgb: np.ndarray) -> np.ndarray:
    side = rgb.shape[0]
    smooth = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)
    for _ in range(5):
        smooth = cv2.bilateralFilter(smooth, 9, 80, 9)
    hsv = cv2.cvtColor(smooth, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] = hsv[..., 1] * 1.8 + 30  # vivid
    hsv[..., 2] = hsv[..., 2] * 1.1 + 20
    vivid = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    flat = (vivid // 80) * 80 + 40  # three flat tones per channel
    edges = cv2.dilate(cv2.Canny(cv2.cvtColor(smooth, cv2.COLOR_RGB2GRAY), 60, 140), np.ones((5, 5), np.uint8))
    flat[edges > 0] = 0  # bold black outlines
    return cv2.resize(flat.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)


def sketch(rgb: np.ndarray) -> np.ndarray:
    gray, _ = cv2.pencilSketch(rgb, sigma_s=50, sigma_r=0.08, shade_factor=0.04)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)


def pixelart(rgb: np.ndarray) -> np.ndarray:
    small = cv2.resize(rgb, (16, 16), interpolation=cv2.INTER_AREA)
    return np.asarray(Image.fromarray(small).quantize(colors=8, method=Image.Quantize.MEDIANCUT).convert("RGB"))


# style -> (stylizer, side of the saved image): sizes echo the references' sources.
RECIPES = {
    "watercolor": (watercolor, 416),
    "cartoon": (cartoon, 960),
    "sketch": (sketch, 512),
    "pixelart": (pixelart, None),
}


def photo(index: int) -> tuple[np.ndarray, str]:
    """Photo `index` (cycling) as RGB, and its caption."""
    load, caption, _ = PHOTOS[index % len(PHOTOS)]
    img = load()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]), caption


# The sketch style is also the storyboard reference's: each photo framed close, medium or wide,
# its caption led by the shot token (crop size as a share of the photo's short side). params.yaml
# declares these tokens for styles.sketch.
FRAMED_STYLE = "sketch"
FRAMINGS = {"<cu_trg>": 0.3, "<ms_trg>": 0.6, "<fs_trg>": 1.0}
# The watercolors come square, 16:9 and 2:3 (width / height), by image number mod 4.
SHAPED_STYLE = "watercolor"
SHAPES = {1: 16 / 9, 3: 2 / 3}


def random_view(rgb: np.ndarray, rng: np.random.Generator, side: int, low: float = 0.55, high: float = 1.0,
                share: float | None = None, aspect: float = 1.0) -> np.ndarray:
    """A random square crop (`share`, else `low`-`high`, of the short side), maybe mirrored, scaled to
    `side`. With an `aspect` (width / height), the crop grows around the square's centre to that
    shape (shrunk to fit the photo) and its short side is scaled to `side`: the same random draws."""
    h, w = rgb.shape[:2]
    crop = int(min(h, w) * (share or rng.uniform(low, high)))
    top, left = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    ch, cw = crop, crop
    if aspect != 1.0:
        ch, cw = (crop, round(crop * aspect)) if aspect > 1 else (round(crop / aspect), crop)
        fit = min(1.0, h / ch, w / cw)
        ch, cw = int(ch * fit), int(cw * fit)
        top = int(np.clip(top + crop // 2 - ch // 2, 0, h - ch))
        left = int(np.clip(left + crop // 2 - cw // 2, 0, w - cw))
    view = rgb[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    size = (side, side) if aspect == 1.0 else (round(side * max(aspect, 1.0)), round(side / min(aspect, 1.0)))
    return cv2.resize(np.ascontiguousarray(view), size, interpolation=cv2.INTER_AREA)


def plant_edge_cases(folder: Path, good: list[Image.Image], extra: list[tuple[Image.Image, str]],
                     rng: np.random.Generator) -> None:
    """Files the filter must reject or repair, so every demo run exercises them."""
    for i, img in enumerate(good[:3]):  # blurred copies: rejected by the Laplacian test
        small = img.reduce(max(1, max(img.size) // 128))  # the same blur, at a fraction of a large image's cost
        blurred = cv2.GaussianBlur(np.asarray(small), (0, 0), max(small.size) / 8)
        Image.fromarray(blurred).resize(img.size, Image.Resampling.BILINEAR).save(folder / f"blurred_{i}.png")
    buf = io.BytesIO()
    good[0].save(buf, format="PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file with an image's name\n")
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / "tiny.png")
    # Kept after repair: grayscale, transparent and EXIF-rotated files become upright RGB.
    (gray, _), (rgba, _), (upright, _) = extra
    gray.convert("L").save(folder / "gray.png")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[: rgba.size[1] // 6] = 0  # a transparent band on top
    rgba = rgba.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: viewers rotate the stored pixels 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", exif=exif, quality=95)
    for name, (_, caption) in zip(("gray", "rgba", "rotated"), extra):
        (folder / f"{name}.txt").write_text(caption + "\n")


def build_style(style: str, folder: Path, count: int, seed: int) -> None:
    stylize, side = RECIPES[style]
    rng = np.random.default_rng([seed, list(RECIPES).index(style)])
    made = []
    for i in track(range(count + 3), description=f"sample {style}"):
        rgb, caption = photo(i)
        shot = list(FRAMINGS)[i % len(FRAMINGS)] if style == FRAMED_STYLE else None
        aspect = SHAPES.get(i % 4, 1.0) if style == SHAPED_STYLE else 1.0
        view = random_view(rgb, rng, side or 256, share=FRAMINGS.get(shot), aspect=aspect)
        made.append((Image.fromarray(stylize(view)), f"{shot}, {caption}" if shot else caption))
    for i, (img, caption) in enumerate(made[:count]):
        img.save(folder / f"{style}_{i:03d}.png")
        (folder / f"{style}_{i:03d}.txt").write_text(caption + "\n")
    plant_edge_cases(folder, [img for img, _ in made[:count]], made[count:], rng)
