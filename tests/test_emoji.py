"""The demo's emoji: the committed sets, their renderer, the script that fetched them (its integrity
check and subset, on made-up tarballs: tests never reach npm) and the sample stage's folders."""
import io
import json
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from stylemix import emoji
from stylemix.demo import fetch_emoji
from stylemix.demo.sample import EXTRA, build_style, build_truth, check_heldout, style_subjects
from stylemix.errors import StyleMixError
from stylemix.images import image_files, on_white


def test_every_look_holds_the_same_subjects_with_its_source_pinned():
    subjects = emoji.subjects()
    assert len(subjects) >= 150
    for look, (package, version, _) in emoji.LOOKS.items():
        data = emoji.icon_set(look)
        assert sorted(data["icons"]) == subjects
        assert data["source"] | {"look": None} == {"package": package, "version": version,
                                                  "integrity": fetch_emoji.INTEGRITY[look], "look": None}
        assert data["info"]["license"]["spdx"] in ("Apache-2.0", "CC-BY-4.0", "MIT", "CC-BY-SA-4.0")
    attribution = (emoji.SETS / "ATTRIBUTION.md").read_text()
    assert all(f"`{package}@{version}`" in attribution for package, version, _ in emoji.LOOKS.values())


def test_render_sizes_zooms_and_canvases():
    full = emoji.render("lineart", "zebra", 64)
    assert full.size == (64, 64) and full.mode == "RGBA"
    alpha = np.asarray(full.getchannel("A"))
    assert alpha.min() == 0 and alpha.max() == 255  # transparent around, opaque lines
    small = np.asarray(emoji.render("lineart", "zebra", 64, zoom=0.5).getchannel("A"))
    assert small[:14].max() == 0 and small[:, :14].max() == 0  # half the size: a margin all round
    assert np.asarray(emoji.render("lineart", "zebra", 64, zoom=2.0).getchannel("A")).mean() > alpha.mean()
    assert emoji.render("noto", "zebra", 48, aspect=16 / 9).size == (85, 48)
    assert emoji.render("noto", "zebra", 48, aspect=2 / 3).size == (48, 72)
    white = np.asarray(on_white(full))
    assert white.shape == (64, 64, 3) and (white[0, 0] == 255).all()
    with pytest.raises(StyleMixError, match="not in .*lineart.json"):
        emoji.render("lineart", "no-such-thing", 64)
    with pytest.raises(StyleMixError, match="unknown emoji look 'sepia'"):
        emoji.icon_set("sepia")


def test_each_style_gets_its_own_subjects_never_a_heldout_one_and_the_truth_every_look(tmp_path):
    heldout = ["zebra", "rocket"]
    captions = {}
    for slot, style in enumerate(("fluent", "lineart")):
        (tmp_path / style).mkdir()
        build_style(style, tmp_path / style, count=5, seed=0, size=64, heldout=heldout, slot=slot)
        captions[style] = {(tmp_path / style / f"{p.stem}.txt").read_text().strip().split(", ")[-1]
                           for p in image_files(tmp_path / style) if p.stem.startswith(style)}
        assert len(captions[style]) == 5
    assert captions["fluent"] != captions["lineart"] and not (captions["fluent"] | captions["lineart"]) & {"zebra", "rocket"}
    assert (tmp_path / "lineart" / "lineart_000.txt").read_text().startswith("<cu_trg>, ")  # the framed style's shots
    assert Image.open(tmp_path / "fluent" / "fluent_000.png").mode == "RGBA"
    assert style_subjects(0, 5, 0, heldout) == style_subjects(0, 5, 0, heldout) != style_subjects(1, 5, 0, heldout)
    assert len(style_subjects(0, 5, 0, heldout)) == 5 + EXTRA
    build_truth(tmp_path / "truth", heldout, 64)
    assert sorted(p.name for p in (tmp_path / "truth").iterdir()) == sorted(emoji.LOOKS)
    assert sorted(p.name for p in (tmp_path / "truth/openmoji").iterdir()) == ["rocket.png", "rocket.txt", "zebra.png", "zebra.txt"]
    assert (tmp_path / "truth/noto/rocket.txt").read_text() == "rocket\n"
    with pytest.raises(StyleMixError, match="sample.heldout names unicorn-x"):
        check_heldout(["zebra", "unicorn-x"])
    with pytest.raises(StyleMixError, match="sample.images_per_style = 500"):
        style_subjects(1, 500, 0, heldout)


def fake_package(folder, look: str, icons: dict, categories: dict | None = None):
    """A tarball shaped like an @iconify-json package, in npm pack's file name."""
    package, version, _ = emoji.LOOKS[look]
    path = folder / fetch_emoji.tarball_name(package, version)
    with tarfile.open(path, "w:gz") as tar:
        files = {"icons.json": {"prefix": look, "width": 32, "height": 32, "icons": icons},
                 "info.json": {"name": look, "license": {"title": "MIT", "spdx": "MIT", "url": "u"}, "author": {"name": "a"}}}
        if categories:
            files["metadata.json"] = {"categories": categories}
        for name, content in files.items():
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_fetch_checks_each_tarball_and_keeps_the_things_every_set_draws(tmp_path, monkeypatch):
    body = {"body": '<path d="M0 0h32v32H0z"/>'}
    names = ["zebra", "rocket", "two-oclock", "smiling-face", "octopus"]
    categories = {"Animals & Nature": ["zebra", "octopus"], "Travel & Places": ["rocket", "two-oclock"],
                  "Smileys & Emotion": ["smiling-face"]}
    tarballs = {look: fake_package(tmp_path, look, {n: body for n in names if not (look == "noto" and n == "octopus")},
                                   categories if look == fetch_emoji.CATEGORIES_FROM else None) for look in emoji.LOOKS}
    with pytest.raises(StyleMixError, match="integrity sha512-.* is not the pinned"):  # the pins are the real packages'
        fetch_emoji.read_package("noto", tarballs["noto"])
    monkeypatch.setattr(fetch_emoji, "INTEGRITY", {look: fetch_emoji.integrity(path) for look, path in tarballs.items()})
    monkeypatch.setattr(sys, "argv", ["fetch_emoji", "--from", str(tmp_path), "--subjects", "2", "--out", str(tmp_path / "sets")])
    fetch_emoji.main()
    written = json.loads((tmp_path / "sets/twemoji.json").read_text())
    # octopus: not in noto; two-oclock: a lookalike family; smiling-face: not a thing
    assert sorted(written["icons"]) == ["rocket", "zebra"] and written["source"]["integrity"] == fetch_emoji.INTEGRITY["twemoji"]
    assert "| twemoji.json |" in (tmp_path / "sets/ATTRIBUTION.md").read_text()
    monkeypatch.setattr(sys, "argv", ["fetch_emoji", "--from", str(tmp_path), "--subjects", "3", "--out", str(tmp_path / "more")])
    with pytest.raises(StyleMixError, match="--subjects 3: only 2 subjects fit"):
        fetch_emoji.main()


def test_the_readme_fetch_command_runs_the_script(tmp_path, monkeypatch):
    """The README's fetch line, in this process on made-up tarballs (--from) instead of npm's."""
    import shlex

    from tests.readme import commands

    line, = commands("fetch-emoji")
    words = shlex.split(line.split("#")[0])
    assert words[:3] == ["python", "-m", "stylemix.demo.fetch_emoji"]
    body = {"body": '<path d="M0 0h32v32H0z"/>'}
    tarballs = {look: fake_package(tmp_path, look, {"zebra": body, "rocket": body},
                                   {"Animals & Nature": ["zebra", "rocket"]} if look == fetch_emoji.CATEGORIES_FROM else None)
                for look in emoji.LOOKS}
    monkeypatch.setattr(fetch_emoji, "INTEGRITY", {look: fetch_emoji.integrity(path) for look, path in tarballs.items()})
    monkeypatch.setattr(sys, "argv", ["fetch_emoji", *words[3:], "--from", str(tmp_path), "--subjects", "2", "--out", str(tmp_path / "sets")])
    fetch_emoji.main()
    assert sorted(json.loads((tmp_path / "sets/lineart.json").read_text())["icons"]) == ["rocket", "zebra"]
