"""Aspect-ratio buckets, as kohya's trainer makes them: sizes of at most resolution^2 pixels whose
sides step by `base.buckets.step` px between min_side and max_side, plus the square. filter@S gives
each image the bucket nearest its aspect ratio and crops it as little as that needs; encode@S and
train@S keep each bucket's images together, so a batch holds one size. Off, the one bucket is the
square resolution x resolution. A bucket is (width, height), as PIL gives sizes."""
import math

from PIL import Image

from stylemix import params
from stylemix.images import resize_crop

Size = tuple[int, int]


def sizes(base: params.Base) -> list[Size]:
    """Every bucket of `base`, sorted: the square alone when buckets are off."""
    cfg, res = base.buckets, base.resolution
    if not cfg.enabled:
        return [(res, res)]
    step, area = cfg.step, res * res
    low, high = cfg.min_side or res // 2, cfg.max_side or res * 2
    square = res // step * step
    found = {(square, square)}
    for width in range(math.ceil(low / step) * step, high + 1, step):
        height = min(high, area // width // step * step)
        if height >= low:
            found |= {(width, height), (height, width)}
    return sorted(found)


def nearest(size: Size, buckets: list[Size]) -> Size:
    """The bucket whose aspect ratio is nearest the image's (by log ratio: as far for tall as for wide)."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - ratio))


def beyond(size: Size, buckets: list[Size]) -> float:
    """How much of the image's long side its bucket's crop cuts beyond what the widest (tallest)
    bucket's shape cuts anyway: 0 inside the buckets' range, 0.2 for a fifth cut off."""
    ratio = size[0] / size[1]
    widest, tallest = max(w / h for w, h in buckets), min(w / h for w, h in buckets)
    if ratio > widest:
        return 1 - widest / ratio
    if ratio < tallest:
        return 1 - ratio / tallest
    return 0.0


def fit(img: Image.Image, among: list[Size], resample: str) -> tuple[Image.Image, dict]:
    """The image resized and center-cropped to its nearest bucket, and what SDXL's micro-conditioning
    wants to know of it later (its index row's original_size, bucket and crop_top_left)."""
    bucket = nearest(img.size, among)
    fitted, (top, left) = resize_crop(img, bucket, resample)
    return fitted, {"original_size": list(img.size), "bucket": list(bucket), "crop_top_left": [top, left]}


def name(bucket: Size) -> str:
    return f"{bucket[0]}x{bucket[1]}"


def parse(text: str) -> Size:
    width, height = text.split("x")
    return int(width), int(height)
