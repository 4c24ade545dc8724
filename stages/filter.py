"""filter@S: keep a style's sharp, readable, distinct images; resize + center-crop them.

Per image, in order: decodable, big enough, sharp enough (variance of the Laplacian), not a
near-duplicate (perceptual hash) of one already kept. Kept images are written as PNG with their
sidecar caption; the filter's verdict on every file lands in reports/filter/<style>/.
"""
import shutil
import sys
from collections import Counter
from pathlib import Path

import imagehash
import numpy as np
from rich.console import Console
from rich.table import Table

from stylemix import params
from stylemix.errors import StyleMixError, run_stage
from stylemix.images import UnreadableImage, contact_sheet, image_files, laplacian_variance, load_rgb, resize_crop
from stylemix.outputs import atomic_dir, write_json, write_jsonl
from stylemix.paths import FILTER_REPORTS, FILTERED
from stylemix.progress import track


def judge(files: list[Path], cfg: params.Filter, label: str = "filter") -> tuple[list[dict], list[dict]]:
    """Split files into kept and rejected records; each rejection carries its reason."""
    kept, rejected, hashes, stems = [], [], [], {}
    for path in track(files, description=label):
        record = {"file": path.name}
        try:
            img = load_rgb(path)
        except UnreadableImage as err:
            rejected.append(record | {"reason": "unreadable", "detail": str(err)})
            continue
        record["image"] = img
        if min(img.size) < cfg.min_side:
            rejected.append(record | {"reason": "too small", "detail": f"{img.size[0]}x{img.size[1]} < {cfg.min_side} px"})
            continue
        sharpness = laplacian_variance(img, cfg.analysis_size)
        record["laplacian"] = round(sharpness, 2)
        if sharpness < cfg.laplacian_min:
            rejected.append(record | {"reason": "blurry", "detail": f"laplacian {sharpness:.1f} < {cfg.laplacian_min:g}"})
            continue
        if path.stem in stems:
            rejected.append(record | {"reason": "duplicate name", "detail": f"same stem as {stems[path.stem]}"})
            continue
        if cfg.dedup_distance is not None:
            bits = imagehash.phash(img).hash.flatten()
            if hashes:
                distances = (np.array([h for h, _ in hashes]) != bits).sum(axis=1)
                nearest = int(distances.argmin())
                if distances[nearest] <= cfg.dedup_distance:
                    detail = f"phash distance {distances[nearest]} to {hashes[nearest][1]}"
                    rejected.append(record | {"reason": "near duplicate", "detail": detail})
                    continue
            hashes.append((bits, path.name))
        stems[path.stem] = path.name
        kept.append(record)
    return kept, rejected


def write_kept(kept: list[dict], source: Path, out: Path, resolution: int, resample: str) -> list[dict]:
    """Resize + crop each kept image into `out` as PNG, with its sidecar caption when it has one."""
    index = []
    for rec in kept:
        img = rec["image"]
        square, (top, left) = resize_crop(img, resolution, resample)
        name = Path(rec["file"]).stem + ".png"
        square.save(out / name)
        sidecar = source / (Path(rec["file"]).stem + ".txt")
        if sidecar.is_file():
            shutil.copyfile(sidecar, out / (Path(name).stem + ".txt"))
        # Original size and crop are what SDXL's micro-conditioning wants to know later.
        index.append({"file_name": name, "source": rec["file"], "original_size": list(img.size),
                      "crop_top_left": [top, left], "laplacian": rec["laplacian"]})
    return index


def filter_style(name: str, style: params.Style, cfg: params.Filter, resolution: int,
                 out: Path = FILTERED, reports: Path = FILTER_REPORTS) -> dict:
    source = Path(style.source)
    if not source.is_dir():
        raise StyleMixError(f"styles.{name}.source = {style.source!r}: folder not found; put the style's images there or fix the path")
    files = image_files(source)
    if not files:
        raise StyleMixError(f"style {name}: no image files in {source} (looked for .png, .jpg, .webp, ...)")
    kept, rejected = judge(files, cfg, f"filter {name}")
    if not kept:
        reasons = ", ".join(f"{n} {r}" for r, n in Counter(r["reason"] for r in rejected).items())
        raise StyleMixError(
            f"style {name}: no image of {len(files)} in {source} passed the filter ({reasons}); "
            f"filter.laplacian_min = {cfg.laplacian_min:g} and filter.min_side = {cfg.min_side} may be too strict"
        )
    with atomic_dir(out / name) as tmp:
        write_jsonl(tmp / "index.jsonl", write_kept(kept, source, tmp, resolution, style.resample))
    summary = {"kept": len(kept), "rejected": len(rejected),
               "rejected_by_reason": dict(Counter(r["reason"] for r in rejected))}
    with atomic_dir(reports / name) as tmp:
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "rejected.json", [{k: r[k] for k in ("file", "reason", "detail")} for r in rejected])
        tiles = [(r.get("image"), f"{r['file']}: {r['reason']} ({r['detail']})") for r in rejected]
        contact_sheet(tiles or [(None, "nothing rejected")]).save(tmp / "rejected.png")
    return summary | {"rejected_files": rejected}


def main() -> None:
    if len(sys.argv) != 2:
        raise StyleMixError("usage: python -m stages.filter STYLE")
    p = params.load("filter", "base", "styles")
    name = sys.argv[1]
    result = filter_style(name, params.style(p, name), p.filter, p.base.resolution)
    table = Table(title=f"filter {name}: kept {result['kept']}, rejected {result['rejected']}")
    for column in ("file", "reason", "detail"):
        table.add_column(column)
    for r in result["rejected_files"]:
        table.add_row(r["file"], r["reason"], r["detail"])
    Console().print(table)


if __name__ == "__main__":
    run_stage(main)
