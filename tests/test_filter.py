import json

import numpy as np
import pytest
from PIL import Image

from stages.filter import filter_style
from stylemix import params
from stylemix.demo.sample import build_style
from stylemix.errors import StyleMixError
from stylemix.outputs import read_jsonl


@pytest.fixture(scope="module")
def pixel_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flat")
    build_style("flat", folder, count=6, seed=0)
    return folder


def run(source, tmp_path, **cfg):
    style = params.Style(source=str(source), trigger="ffstyle", resample="nearest")
    return filter_style("flat", style, params.Filter(**cfg), params.Base(resolution=64), tmp_path / "filtered", tmp_path / "reports")


def test_planted_edge_cases_are_sorted_out(pixel_source, tmp_path):
    result = run(pixel_source, tmp_path)
    reasons = {r["file"]: r["reason"] for r in result["rejected_files"]}
    assert reasons == {"blurred_0.png": "blurry", "blurred_1.png": "blurry", "blurred_2.png": "blurry",
                       "truncated.png": "unreadable", "empty.jpg": "unreadable", "notes.jpg": "unreadable",
                       "tiny.png": "too small"}
    kept = read_jsonl(tmp_path / "filtered/flat/index.jsonl")
    assert {k["file_name"] for k in kept} >= {"gray.png", "rgba.png", "rotated.png", "flat_000.png"}
    assert result["kept"] == len(kept) == 9
    assert all(k["original_size"] == [128, 128] and k["laplacian"] >= 100 for k in kept)
    assert (tmp_path / "filtered/flat/flat_000.txt").read_text().strip()  # sidecar travels along
    summary = json.loads((tmp_path / "reports/flat/summary.json").read_text())
    assert summary == {"kept": 9, "rejected": 7, "rejected_by_reason": {"blurry": 3, "unreadable": 3, "too small": 1},
                       "buckets": {"64x64": 9}}  # buckets off: the square
    assert (tmp_path / "reports/flat/rejected.png").stat().st_size > 0


def test_buckets_keep_each_shape_and_say_what_a_crop_beyond_them_costs(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    build_style("openmoji", source, count=8, seed=0)  # square, 16:9 and 2:3
    strip = np.random.default_rng(0).integers(0, 255, (60, 360, 3), dtype=np.uint8)
    Image.fromarray(strip).save(source / "strip.png")  # 6:1, beyond the widest bucket (128x32: 4:1)
    style = params.Style(source=str(source), trigger="omstyle")
    base = params.Base(resolution=64, buckets=params.Buckets(enabled=True, step=16))
    result = filter_style("openmoji", style, params.Filter(), base, tmp_path / "filtered", tmp_path / "reports")
    assert list(result["buckets"].items()) == [("48x80", 2), ("64x64", 6), ("80x48", 3), ("128x32", 1)]  # tall to wide
    for row in read_jsonl(tmp_path / "filtered/openmoji/index.jsonl"):
        assert Image.open(tmp_path / "filtered/openmoji" / row["file_name"]).size == tuple(row["bucket"])
    assert "strip.png (360x60) is beyond the last bucket 128x32: cropped to it, losing 33% of its long side" in capsys.readouterr().out
    summary = json.loads((tmp_path / "reports/openmoji/summary.json").read_text())
    assert summary["buckets"] == result["buckets"] and (tmp_path / "reports/openmoji/buckets.png").stat().st_size > 0


def test_near_duplicates_are_dropped(pixel_source, tmp_path):
    import shutil

    source = tmp_path / "src"
    shutil.copytree(pixel_source, source)
    shutil.copy(source / "flat_000.png", source / "flat_000_copy.png")
    reasons = {r["file"]: r["detail"] for r in run(source, tmp_path)["rejected_files"]}
    assert reasons["flat_000_copy.png"] == "phash distance 0 to flat_000.png"
    kept = run(source, tmp_path, dedup_distance=None)["kept"]
    assert kept == 10


def test_threshold_that_rejects_everything_names_style_and_threshold(pixel_source, tmp_path):
    with pytest.raises(StyleMixError, match=r"style flat: no image of 16 .*filter.laplacian_min = 1e\+09"):
        run(pixel_source, tmp_path, laplacian_min=1e9)
    assert not (tmp_path / "filtered/flat").exists()


def test_missing_and_empty_style_folders(tmp_path):
    with pytest.raises(StyleMixError, match="styles.flat.source = .*folder not found"):
        run(tmp_path / "nowhere", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StyleMixError, match="style flat: no image files in"):
        run(tmp_path / "empty", tmp_path)


def test_sample_folder_has_24_images_with_captions(tmp_path):
    build_style("openmoji", tmp_path, count=24, seed=0)
    images = sorted(tmp_path.glob("openmoji_*.png"))
    assert len(images) == 24
    assert all(p.with_suffix(".txt").read_text().strip() for p in images)
    planted = {"blurred_0.png", "truncated.png", "empty.jpg", "notes.jpg", "tiny.png", "gray.png", "rgba.png", "rotated.jpg"}
    assert planted <= {p.name for p in tmp_path.iterdir()}
