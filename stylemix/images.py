"""Image reading, the blur measure, resize + crop, and labelled contact sheets."""
import textwrap
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


class UnreadableImage(Exception):
    """The file is not an image we can decode; the message is the reason."""


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: Path) -> Image.Image:
    """Decode fully and apply EXIF orientation: RGBA when some pixel is not opaque (the alpha the
    filter keeps, a masked loss's mask), RGB otherwise."""
    if path.stat().st_size == 0:
        raise UnreadableImage("empty file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated files fail here, not later
            im = ImageOps.exif_transpose(im)
    except UnidentifiedImageError:
        raise UnreadableImage("not an image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"cannot decode: {err}") from None
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        if im.getchannel("A").getextrema()[0] < 255:
            return im
    return im.convert("RGB")


def load_rgb(path: Path) -> Image.Image:
    """load_image flattened: what a model sees of a picture (transparency as white)."""
    return flat(load_image(path))


def flat(img: Image.Image) -> Image.Image:
    """An RGB picture as it is; an RGBA one flattened onto white."""
    return on_white(img) if img.mode == "RGBA" else img.convert("RGB")


def on_white(img: Image.Image) -> Image.Image:
    """An RGBA picture flattened onto white."""
    canvas = Image.new("RGB", img.size, "white")
    canvas.paste(img, mask=img.getchannel("A"))
    return canvas


def _scale_to_cover(img: Image.Image, size: tuple[int, int], resample: str) -> Image.Image:
    """Scale so the image covers `size` (w, h) with its aspect ratio kept."""
    w, h = img.size
    scale = max(size[0] / w, size[1] / h)
    new = (max(size[0], round(w * scale)), max(size[1], round(h * scale)))
    # Grow with the style's filter (nearest keeps pixel art crisp); never shrink with nearest,
    # which drops pixels instead of averaging them.
    method = RESAMPLE[resample]
    if scale < 1 and resample == "nearest":
        method = Image.Resampling.BOX
    return img.resize(new, method)


def laplacian_variance(img: Image.Image, analysis_size: int) -> float:
    """Variance of the Laplacian of the grayscale image. Images larger than analysis_size are
    first shrunk (area-averaged) to it, so a 2000 px scan is judged at the scale of a 512 px one;
    smaller ones are measured as they are, since upscaling a 16 px sprite adds no detail and
    only dilutes its edges (16x nearest upscaling divides the measure by about 10)."""
    gray = img.convert("L")
    if min(gray.size) > analysis_size:
        gray = _scale_to_cover(gray, (analysis_size, analysis_size), "area")  # the short side to analysis_size
    return float(cv2.Laplacian(np.asarray(gray, dtype=np.float64), cv2.CV_64F).var())


def resize_crop(img: Image.Image, size: tuple[int, int], resample: str) -> tuple[Image.Image, tuple[int, int]]:
    """Scale to cover `size` (w, h), center-crop to it; returns the crop's (top, left) in the scaled image."""
    scaled = _scale_to_cover(img, size, resample)
    w, h = scaled.size
    top, left = (h - size[1]) // 2, (w - size[0]) // 2
    return scaled.crop((left, top, left + size[0], top + size[1])), (top, left)


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def contact_sheet(tiles: list[tuple[Image.Image | None, str]], tile: int = 160, cols: int = 6) -> Image.Image:
    """A grid of thumbnails, each labelled underneath; a missing image is a grey tile."""
    label_h = 44
    cols = max(1, min(cols, len(tiles)))
    rows = max(1, -(-len(tiles) // cols))
    sheet = Image.new("RGB", (cols * tile, rows * (tile + label_h)), "white")
    draw, small = ImageDraw.Draw(sheet), font(11)
    for i, (img, label) in enumerate(tiles):
        x, y = (i % cols) * tile, (i // cols) * (tile + label_h)
        # Small images (pixel art) are enlarged with nearest so their pixels stay visible.
        method = Image.Resampling.NEAREST if img and max(img.size) < tile else Image.Resampling.BICUBIC
        thumb = ImageOps.pad(img, (tile - 8, tile - 8), method, color="white") if img else Image.new("RGB", (tile - 8, tile - 8), "#bbb")
        sheet.paste(thumb, (x + 4, y + 4))
        text = "\n".join(textwrap.wrap(label, width=tile // 6)[:3])
        draw.multiline_text((x + 4, y + tile), text, fill="black", font=small, spacing=1)
    return sheet


def grid(rows: list[tuple[str, list[Image.Image]]], columns: list[str], title: str = "", tile: int = 128,
         notes: list[list[str]] | None = None) -> Image.Image:
    """A labelled grid: one row per (label, images), one column per label in `columns`; `notes`
    (per row, per image) are written under each image."""
    left, top, head, note = 150, 34 if title else 0, 22, 16 if notes else 0
    sheet = Image.new("RGB", (left + tile * len(columns), top + head + (tile + note) * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((6, 8), title, fill="black", font=font(15))
    for c, label in enumerate(columns):
        draw.text((left + c * tile + 4, top + 4), label, fill="black", font=font(11))
    for r, (label, images) in enumerate(rows):
        y = top + head + r * (tile + note)
        draw.multiline_text((6, y + tile // 2 - 8), "\n".join(textwrap.wrap(label, 22)), fill="black", font=font(12))
        for c, img in enumerate(images):
            method = Image.Resampling.NEAREST if max(img.size) < tile else Image.Resampling.LANCZOS
            sheet.paste(img.convert("RGB").resize((tile - 4, tile - 4), method), (left + c * tile + 2, y + 2))
            if notes:
                draw.text((left + c * tile + 4, y + tile), notes[r][c], fill="black", font=font(11))
    return sheet
