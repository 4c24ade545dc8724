"""The web UI's library, without a browser: drawing with switched adapters, PNG settings read back,
the X/Y plot's value syntax, saving a mix into params.yaml."""

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from stylemix import params
from stylemix.drawing.xy_grid import MAX_CELLS, Axis, cells, parse_values, plot
from stylemix.errors import StyleMixError
from tests.ui_workspace import COMBO, bomb_png, make_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ui"))


@pytest.fixture
def drawer(workspace, monkeypatch):
    from stylemix.drawing.drawer import Drawer

    monkeypatch.chdir(workspace)
    p = params.load("base", "generate")
    return Drawer(p.base), p.generate.model_copy(update={"steps": 4})


def pixels(image):
    import numpy as np

    return np.asarray(image, dtype=float)


def test_a1111_value_syntax():
    assert parse_values("weight:x", "0, 0.5,1") == [0, 0.5, 1]
    assert parse_values("weight:x", "0-1 [5]") == [0, 0.25, 0.5, 0.75, 1]
    assert parse_values("weight:x", "0-1 (+0.5)") == [0, 0.5, 1]
    assert parse_values("seed", "1-3 [3]") == [1, 2, 3]
    assert parse_values("prompt", 'a cat, "a rocket, at night"') == ["a cat", "a rocket, at night"]
    assert parse_values("", "") == [None]
    for kind, text in (("weight:x", "zero"), ("seed", "0.5"), ("weight:x", "1-0 (+0)"), ("prompt", " , ")):
        with pytest.raises(StyleMixError, match="axis"):
            parse_values(kind, text)


def test_grid_cells_and_plot():
    x, y = Axis("weight:lineart", [0.0, 1.0]), Axis("seed", [3, 4])
    got = cells(x, y)
    assert [(r, c) for r, c, _ in got] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert got[1][2] == {"weights": {"lineart": 1.0}, "seed": 3}
    picture = plot(x, y, [Image.new("RGB", (64, 64), "red")] * 4, [0.1, 0.2, 0.3, 0.4], "t")
    assert picture.size == (150 + 2 * 144, 34 + 22 + 2 * (144 + 16))
    with pytest.raises(StyleMixError, match=f"at most {MAX_CELLS}"):
        cells(Axis("seed", list(range(9))), Axis("seed", list(range(8))))


def test_weights_switch_adapters_and_the_png_reads_back(drawer, tmp_path):
    from stylemix.drawing.drawer import settings_from_png

    d, cfg = drawer
    base, _ = d.draw("zebra", {}, 0, cfg)
    wc, meta = d.draw("zebra", {"openmoji": 1.0, "lineart": 0.0}, 0, cfg)
    half, _ = d.draw("zebra", {"openmoji": 0.5}, 0, cfg)
    again, _ = d.draw("zebra", {}, 0, cfg)
    assert abs(pixels(wc) - pixels(base)).mean() > abs(pixels(half) - pixels(base)).mean() > 1  # weight 1 moves it further
    assert (pixels(again) == pixels(base)).all()  # a disabled adapter leaves the base untouched
    wc.save(tmp_path / "wc.png", pnginfo=meta)
    s = settings_from_png(tmp_path / "wc.png")
    assert s["adapters"] == {"openmoji": 1.0} and s["prompt"] == "zebra" and s["steps"] == 4
    assert "omstyle" in Image.open(tmp_path / "wc.png").text["parameters"]  # the trigger word went in


def test_load_settings_refuses_what_is_no_drawing(tmp_path):
    """A decompression bomb is refused from its header; a JPEG named .png, or text, is no PNG."""
    from stylemix.drawing.drawer import settings_from_png

    bomb_png(tmp_path / "bomb.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png", format="jpeg")
    (tmp_path / "text.png").write_text("not a picture")
    for name, said in (("bomb.png", "bomb.png: too many pixels for a drawing"), ("photo.png", r"photo.png: not a PNG image \(a JPEG file\)"),
                       ("text.png", "text.png: not a PNG image")):
        with pytest.raises(StyleMixError, match=said):
            settings_from_png(tmp_path / name)


def test_a_batch_draws_the_pictures_drawn_one_at_a_time_schedules_included(drawer, tmp_path):
    """draw_batch draws generate.batch_size images at once, each from its own seed: the pictures drawn
    alone (float rounding apart); a scheduled weight starts every batch at its schedule's first step."""
    import json

    d, cfg = drawer
    prompts, seeds = ["a tabby cat with green eyes", "a rocket on a launch pad", "a cup of coffee"], [0, 1, 2]
    weights, schedules = {"openmoji": 1.0}, {"openmoji": params.Window(start=0, end=0.5)}
    alone = [d.draw(prompt, weights, seed, cfg, schedules=schedules)[0] for prompt, seed in zip(prompts, seeds)]
    batched = d.draw_batch(prompts, weights, seeds, cfg.model_copy(update={"batch_size": 2}), schedules=schedules)
    for i, (image, meta) in enumerate(batched):
        image.save(tmp_path / f"{i}.png", pnginfo=meta)
    assert [json.loads(Image.open(tmp_path / f"{i}.png").text["stylemix"])["seed"] for i in range(3)] == seeds
    assert max(abs(pixels(one) - pixels(image)).max() for one, (image, _) in zip(alone, batched)) <= 2
    unscheduled, _ = d.draw_batch(prompts, weights, seeds, cfg)[2]
    assert abs(pixels(unscheduled) - pixels(alone[2])).mean() > 1  # the schedule shows in the picture


def test_the_draw_tabs_block_weights_and_schedules(workspace, monkeypatch, tmp_path):
    from stylemix.commands.ui import Studio, as_params, specs
    from stylemix.mixing.mixes import save_mix

    monkeypatch.chdir(workspace)
    studio, on = Studio(), {"openmoji": 1.0, "lineart": 0.0}
    form = {"prompt": "a tabby cat with green eyes", "negative": "", "seed": 0, "steps": 4, "guidance": 7.5, "size": 64,
            "sampler": "dpmsolver++", "blocks": "", "schedule": ""}
    base, _ = studio.draw(form | {"prompt": "omstyle, a tabby cat with green eyes"}, {})  # the text openmoji gets
    plain, _ = studio.draw(form, on)
    # every attention block of openmoji off (its LoRA has nothing else); lineart is off, so its preset is left out
    off, _ = studio.draw(form | {"blocks": "openmoji=down:0,mid:0,up:0\nlineart=OUTALL"}, on)
    half, _ = studio.draw(form | {"schedule": "openmoji=0-0.5"}, on)
    assert (pixels(off) == pixels(base)).all() and abs(pixels(plain) - pixels(base)).mean() > 1
    assert abs(pixels(half) - pixels(plain)).mean() > 0 and abs(pixels(half) - pixels(base)).mean() > 0
    with pytest.raises(StyleMixError, match=r"^Schedules 'openmoji=1-0': start 1 must be below end 0$"):
        studio.draw(form | {"schedule": "openmoji=1-0"}, on)
    path = tmp_path / "params.yaml"
    path.write_text((workspace / "params.yaml").read_text())
    extra = {key: as_params(key, specs(form | {"blocks": "openmoji=up:0.5", "schedule": "lineart=0:1,0.8:0"}, key))
             for key in ("blocks", "schedule")}
    save_mix("finer", {"openmoji": 0.5, "lineart": 0.5}, path, extra)  # the Save mix tab's call; the schema checks it
    saved = params.load("merge", path=path).merge.combos["finer"]
    assert saved.blocks["openmoji"].up == 0.5 and saved.schedule["lineart"] == [(0, 1), (0.8, 0)]


def test_a1111_parameters_read_back(tmp_path):
    from stylemix.drawing.drawer import settings_from_png

    meta = PngInfo()
    meta.add_text("parameters", "a cat <lora:openmoji:0.6>, by a window\nNegative prompt: ugly\n"
                  "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x768, Model: v1-5")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", pnginfo=meta)
    s = settings_from_png(tmp_path / "a.png")
    assert s == {"prompt": "a cat , by a window", "negative_prompt": "ugly", "seed": 42, "steps": 20,
                 "guidance_scale": 7.0, "size": 512, "adapters": {"openmoji": 0.6}}
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(StyleMixError, match="plain.png: carries no drawing settings"):
        settings_from_png(tmp_path / "plain.png")


def test_bad_input_and_a_deleted_lora(drawer, workspace):
    import shutil

    from stylemix.drawing.drawer import Cancelled

    d, cfg = drawer
    with pytest.raises(StyleMixError, match="prompt is empty"):
        d.draw("  ", {}, 0, cfg)
    with pytest.raises(StyleMixError, match="out of range"):
        d.draw("a cat", {"lineart": 3.0}, 0, cfg)
    d.draw("a cat", {"lineart": 1.0}, 0, cfg)
    shutil.copytree(workspace / "models/lora/lineart", workspace / "lineart.bak")
    shutil.rmtree(workspace / "models/lora/lineart")
    try:
        with pytest.raises(StyleMixError, match="no trained style or merged combination named 'lineart'.*refresh"):
            d.draw("a cat", {"lineart": 1.0}, 0, cfg)
        d.draw("a cat", {"openmoji": 1.0}, 0, cfg)  # the others still draw
    finally:
        shutil.move(workspace / "lineart.bak", workspace / "models/lora/lineart")
    with pytest.raises(Cancelled):  # Cancel pressed during the first step stops the drawing at the next
        d.draw("a cat", {}, 0, cfg, on_step=lambda i, n: d.cancel())


def test_save_mix_keeps_comments_and_checks_the_schema(workspace, monkeypatch, tmp_path):
    from stylemix.mixing.mixes import save_mix

    monkeypatch.chdir(workspace)
    path = tmp_path / "params.yaml"
    path.write_text((workspace / "params.yaml").read_text())
    before = path.read_text()
    assert save_mix("soft", {"openmoji": 0.7, "lineart": 0.3}, path) == {"openmoji": 0.7, "lineart": 0.3}
    after = path.read_text()
    assert after.startswith(before.split("merge:")[0])  # everything before merge: byte for byte, comments included
    assert "# The offline demo" in after and "# held-out subjects, which no style trains on" in after
    assert params.load("merge", path=path).merge.combos["soft"].weights == {"openmoji": 0.7, "lineart": 0.3}
    # a linear combination in the mix counts as its styles: 0.5 x (0.5, 0.5) + lineart 0.25
    assert save_mix("softer", {COMBO: 0.5, "lineart": 0.25}, path) == {"openmoji": 0.25, "lineart": 0.5}
    saved = path.read_text()
    for name, weights, message in (("soft", {"openmoji": 1, "lineart": 1}, "name is taken"),
                                   ("Bad Name", {"openmoji": 1, "lineart": 1}, "lowercase"),
                                   ("one", {"openmoji": 1, "lineart": 0}, "at least two styles")):
        with pytest.raises(StyleMixError, match=message):
            save_mix(name, weights, path)
        assert path.read_text() == saved  # nothing half-written


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("localhost", False), ("0.0.0.0", True)])
def test_listening_beyond_this_machine_is_warned_about(monkeypatch, capsys, host, warned):
    """`stylemix ui --host 0.0.0.0` says, before it serves, that anyone on the network can draw."""
    import argparse

    from stylemix.commands import ui

    def stop():
        raise StyleMixError("stopped before serving")

    monkeypatch.setattr(ui, "build", stop)
    parser = argparse.ArgumentParser()
    ui.add_arguments(parser)
    with pytest.raises(StyleMixError, match="stopped before serving"):
        ui.run(parser.parse_args(["--host", host]))
    out = capsys.readouterr().out
    assert ("anyone who can reach this machine on port 7860" in out) is warned, out
