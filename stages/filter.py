"""filter@S: keep a style's sharp, readable, distinct images; resize + center-crop them to their bucket.

Per image, in order: decodable, big enough, sharp enough (variance of the Laplacian), not a
near-duplicate (perceptual hash) of one already kept, each judged flattened onto white. Kept images
are written as PNG, with their transparency (a masked loss's mask: stages.encode) and their sidecar
caption, each at the size of its aspect-ratio bucket (stylemix.data.buckets; the square when
`base.buckets` is off); the filter's verdict on every file and the bucket histogram land in
reports/filter/<style>/.
"""
import shutil
import sys
from collections import Counter
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from stylemix import params
from stylemix.data import buckets
from stylemix.errors import StyleMixError, run_stage
from stylemix.evaluation.plots import bars
from stylemix.images import UnreadableImage, contact_sheet, flat, image_files, laplacian_variance, load_image
from stylemix.outputs import atomic_dir, write_json, write_jsonl
from stylemix.paths import FILTER_REPORTS, FILTERED
from stylemix.progress import track

THUMBNAIL = 160  # px: a rejected image's tile on the contact sheet


def judge(files: list[Path], cfg: params.Filter, keep, label: str = "filter") -> list[dict]:
    """Call keep(record, image) for each file that passes, in order; return the rejected records,
    each with its reason and a thumbnail. No full image outlives its turn, so a folder of thousands
    of large images never sits in memory."""
    rejected, stems = [], {}
    # The kept images' perceptual hashes, 64 bits packed in one integer each, in a preallocated
    # array: each new image is compared against all of them in one vectorized step.
    hashes, hashed = np.zeros(len(files), np.uint64), []

    def reject(record: dict, img: Image.Image | None, reason: str, detail: str) -> None:
        if img is not None:
            img = img.copy()
            img.thumbnail((THUMBNAIL, THUMBNAIL))
        rejected.append(record | {"image": img, "reason": reason, "detail": detail})

    for path in track(files, description=label):
        record = {"file": path.name}
        try:
            kept = load_image(path)  # with its alpha, which the filtered copy keeps
        except UnreadableImage as err:
            reject(record, None, "unreadable", str(err))
            continue
        img = flat(kept)  # judged as a model sees it
        if min(img.size) < cfg.min_side:
            reject(record, img, "too small", f"{img.size[0]}x{img.size[1]} < {cfg.min_side} px")
            continue
        sharpness = laplacian_variance(img, cfg.analysis_size)
        record["laplacian"] = round(sharpness, 2)
        if sharpness < cfg.laplacian_min:
            reject(record, img, "blurry", f"laplacian {sharpness:.1f} < {cfg.laplacian_min:g}")
            continue
        if path.stem in stems:
            reject(record, img, "duplicate name", f"same stem as {stems[path.stem]}")
            continue
        if cfg.dedup_distance is not None:
            bits = np.packbits(imagehash.phash(img).hash.flatten()).view(">u8")[0]
            if hashed:
                distances = np.bitwise_count(hashes[: len(hashed)] ^ bits)
                nearest = int(distances.argmin())
                if distances[nearest] <= cfg.dedup_distance:
                    reject(record, img, "near duplicate", f"phash distance {distances[nearest]} to {hashed[nearest]}")
                    continue
            hashes[len(hashed)] = bits
            hashed.append(path.name)
        stems[path.stem] = path.name
        keep(record, kept)
    return rejected


def write_kept(record: dict, img: Image.Image, source: Path, out: Path, sizes: list[buckets.Size], resample: str,
               style: str) -> dict:
    """Resize + crop a kept image to its bucket into `out` as PNG, with its sidecar caption when it
    has one; returns its index row."""
    fitted, placed = buckets.fit(img, sizes, resample)
    if cut := buckets.beyond(img.size, sizes):
        print(f"warning: style {style}: {record['file']} ({img.size[0]}x{img.size[1]}) is beyond the last bucket "
              f"{buckets.name(tuple(placed['bucket']))}: cropped to it, losing {cut:.0%} of its long side; crop it yourself or "
              "widen base.buckets (min_side / max_side)")
    name = Path(record["file"]).stem + ".png"
    fitted.save(out / name)
    sidecar = source / (Path(record["file"]).stem + ".txt")
    if sidecar.is_file():
        shutil.copyfile(sidecar, out / (Path(name).stem + ".txt"))
    return {"file_name": name, "source": record["file"]} | placed | {"laplacian": record["laplacian"]}


def filter_style(name: str, style: params.Style, cfg: params.Filter, base: params.Base,
                 out: Path = FILTERED, reports: Path = FILTER_REPORTS) -> dict:
    source = Path(style.source)
    if not source.is_dir():
        raise StyleMixError(f"styles.{name}.source = {style.source!r}: folder not found; put the style's images there or fix the path")
    files = image_files(source)
    if not files:
        raise StyleMixError(f"style {name}: no image files in {source} (looked for .png, .jpg, .webp, ...)")
    sizes, index = buckets.sizes(base), []
    with atomic_dir(out / name) as tmp:  # each kept image written as it passes
        rejected = judge(files, cfg, lambda record, img: index.append(write_kept(record, img, source, tmp, sizes,
                                                                                  style.resample, name)), f"filter {name}")
        if not index:
            reasons = ", ".join(f"{n} {r}" for r, n in Counter(r["reason"] for r in rejected).items())
            raise StyleMixError(
                f"style {name}: no image of {len(files)} in {source} passed the filter ({reasons}); "
                f"filter.laplacian_min = {cfg.laplacian_min:g} and filter.min_side = {cfg.min_side} may be too strict"
            )
        write_jsonl(tmp / "index.jsonl", index)
    histogram = Counter(tuple(row["bucket"]) for row in index)
    summary = {"kept": len(index), "rejected": len(rejected),
               "rejected_by_reason": dict(Counter(r["reason"] for r in rejected)),
               "buckets": {buckets.name(b): histogram[b] for b in sorted(histogram, key=lambda b: b[0] / b[1])}}  # tall to wide
    with atomic_dir(reports / name) as tmp:
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "rejected.json", [{k: r[k] for k in ("file", "reason", "detail")} for r in rejected])
        tiles = [(r["image"], f"{r['file']}: {r['reason']} ({r['detail']})") for r in rejected]
        contact_sheet(tiles or [(None, "nothing rejected")]).save(tmp / "rejected.png")
        bars(summary["buckets"], f"{name}: images per bucket (width x height, tall to wide)", tmp / "buckets.png")
    return summary | {"rejected_files": rejected}


def main() -> None:
    if len(sys.argv) != 2:
        raise StyleMixError("usage: python -m stages.filter STYLE")
    p = params.load("filter", "base", "styles")
    name = sys.argv[1]
    result = filter_style(name, params.style(p, name), p.filter, p.base)
    shapes = ", ".join(f"{b} {n}" for b, n in result["buckets"].items())
    table = Table(title=f"filter {name}: kept {result['kept']} ({shapes}), rejected {result['rejected']}")
    for column in ("file", "reason", "detail"):
        table.add_column(column)
    for r in result["rejected_files"]:
        table.add_row(r["file"], r["reason"], r["detail"])
    Console().print(table)


if __name__ == "__main__":
    run_stage(main)
