"""The web UI in a real browser: Playwright drives Debian's chromium (never `playwright install`)
against `stylemix ui` serving a workspace of the pretrained tiny model and random style LoRAs.
Every request the page makes must go to 127.0.0.1. Screenshots of each tab land in
$STYLEMIX_UI_SHOTS (the README's come from a run on the demo's own models:
`STYLEMIX_UI_DEMO=1 STYLEMIX_UI_SHOTS=docs/ui pytest tests/test_ui_browser.py` after `make repro`)."""
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT
from tests.e2e import ENV
from tests.readme import commands
from tests.ui_workspace import bomb_png, make_workspace

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} missing: .ci/run installs it (apt-get install -y chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

STARTUP = 180  # s for the server to import torch and gradio and answer: only a hang gets there
DRAW = 120_000  # ms for a drawing on the tiny model (about a second)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    if os.environ.get("STYLEMIX_UI_DEMO"):  # this checkout after `make repro`: the demo's own models, reports, experiments
        kept = (ROOT / "params.yaml").read_text()
        yield ROOT
        (ROOT / "params.yaml").write_text(kept)  # the saved mix goes again
        return
    yield make_workspace(tmp_path_factory.mktemp("ui-browser"))


@pytest.fixture(scope="module")
def server(workspace):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = workspace / ".pytest_cache" / "ui.log"
    log_path.parent.mkdir(exist_ok=True)
    log = log_path.open("w")
    command = commands("ui")[0].split("#")[0].split() + ["--port", str(port)]  # the README's
    proc = subprocess.Popen(command, cwd=workspace,
                            env=ENV | {"GRADIO_ANALYTICS_ENABLED": "False"}, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP
        while "stylemix ui: http" not in log_path.read_text():
            assert proc.poll() is None, f"stylemix ui exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"stylemix ui did not start in {STARTUP} s"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"])
        yield b
        b.close()


def open_page(browser, server: str, outside: list[str]):
    """A page of the UI in its own browser context (its own gradio session); requests to other hosts
    are refused and listed in `outside`."""
    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    page.set_default_timeout(30_000)

    def local_only(route):
        url = route.request.url
        if urlparse(url).hostname == "127.0.0.1" or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", local_only)
    page.goto(server)
    box("openmoji", page).wait_for()
    return page


@pytest.fixture
def page(browser, server):
    outside = []
    page = open_page(browser, server, outside)
    yield page
    page.context.close()
    assert not outside, f"the page asked other hosts: {outside}"


def box(name: str, page):
    return page.get_by_role("checkbox", name=name, exact=True)


def slot(name: str, page) -> int:
    """The slider slot of a style: the order the Refresh button laid them out in."""
    labels = [page.locator(f"#use-{i}").inner_text().strip() for i in range(page.locator("[id^=use-]").count())]
    return labels.index(name)


def set_slider(page, elem: str, value) -> None:
    page.locator(f"#{elem} input[type=range]").fill(str(value))


def png_at(page, selector: str) -> Image.Image:
    """The image the page shows, as the server sent it (not re-encoded: its text chunks intact)."""
    src = page.locator(f"{selector} img").first.get_attribute("src")
    return Image.open(io.BytesIO(page.request.get(src).body()))


def shoot(page, name: str) -> None:
    folder = Path(os.environ.get("STYLEMIX_UI_SHOTS") or ROOT / ".pytest_cache" / "ui-shots")
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=folder / f"{name}.png", full_page=True)


def pick(page, label: str, option: str) -> None:
    combobox = page.get_by_label(label, exact=True)
    combobox.click()
    page.locator(f"#{combobox.get_attribute('aria-controls')}").get_by_role("option", name=option, exact=True).click()


def toast(page, text: str):
    expect(page.get_by_text(re.compile(text)).first).to_be_visible(timeout=DRAW)


def test_draw_with_a_weight_then_load_its_settings_back(page, tmp_path):
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill("a rocket on a launch pad under a blue sky")
    box("openmoji", page).check()
    set_slider(page, f"weight-{slot('openmoji', page)}", 0.6)
    set_slider(page, "steps", 20)
    set_slider(page, "size", 96)
    started = time.monotonic()
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_text(re.compile(r"step \d+/20")).first).to_be_visible(timeout=DRAW)  # the progress bar moves
    expect(page.locator("#result img")).to_be_visible(timeout=DRAW)
    print(f"click to image: {time.monotonic() - started:.1f} s (20 steps, 96 px, first drawing loads the model)")
    shoot(page, "draw")
    image = png_at(page, "#result")
    recipe = json.loads(image.text["stylemix"])
    assert recipe["adapters"] == {"openmoji": 0.6} and recipe["steps"] == 20 and image.size == (96, 96)
    assert recipe["prompt"] == "a rocket on a launch pad under a blue sky" and "Steps: 20" in image.text["parameters"]
    image.save(tmp_path / "drawn.png", pnginfo=_text(image))
    prompt.fill("something else")
    box("openmoji", page).uncheck()
    page.locator("#load input[type=file]").set_input_files(tmp_path / "drawn.png")
    expect(prompt).to_have_value("a rocket on a launch pad under a blue sky")
    expect(box("openmoji", page)).to_be_checked()
    expect(page.locator(f"#weight-{slot('openmoji', page)} input[type=range]")).to_have_value("0.6")


def _text(image):
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    for key, value in image.text.items():
        meta.add_text(key, value)
    return meta


def test_a_two_by_two_grid_scored_per_cell(page):
    page.get_by_role("tab", name="Grid").click()
    pick(page, "X axis", "weight:openmoji")
    page.get_by_label("X values").fill("0, 1")
    pick(page, "Y axis", "seed")
    page.get_by_label("Y values").fill("0-1 [2]")
    page.get_by_role("button", name="Draw grid").click()
    expect(page.locator("#grid-image img")).to_be_visible(timeout=DRAW)
    shoot(page, "grid")
    grid = png_at(page, "#grid-image")
    assert grid.size == (150 + 2 * 144, 34 + 22 + 2 * (144 + 16))  # title, header, 2 x 2 cells with their scores


def test_compare_the_base_with_a_mix_beside_the_reports(page):
    box("openmoji", page).check()
    page.get_by_role("tab", name="Compare").click()
    page.get_by_role("button", name=re.compile("Compare base and this mix")).click()
    expect(page.locator("#compare-slider img")).to_have_count(2, timeout=DRAW)
    shoot(page, "compare")


def test_save_a_mix_into_params_yaml(page, workspace):
    box("openmoji", page).check()
    box("lineart", page).check()
    set_slider(page, f"weight-{slot('lineart', page)}", 0.3)
    page.get_by_text("Block weights and schedules").click()  # the Draw tab's accordion
    page.locator("#blocks textarea").fill("lineart=down:0,mid:0")
    page.get_by_role("tab", name="Save mix").click()
    page.get_by_label("Combination name").fill("soft_mix")
    page.get_by_role("button", name="Save mix to params.yaml").click()
    expect(page.locator("#save-result")).to_contain_text("soft_mix", timeout=DRAW)
    shoot(page, "save")
    text = (workspace / "params.yaml").read_text()
    assert yaml.safe_load(text)["merge"]["combos"]["soft_mix"] == {"weights": {"lineart": 0.3, "openmoji": 1.0},
                                                                   "blocks": {"lineart": {"down": 0.0, "mid": 0.0}}}
    shown = yaml.safe_load(page.locator("#save-result code.language-yaml").inner_text())
    assert shown["merge"]["combos"]["soft_mix"] == yaml.safe_load(text)["merge"]["combos"]["soft_mix"]  # the page shows what it wrote
    assert "# The offline demo" in text  # comments kept
    page.get_by_role("button", name="Save mix to params.yaml").click()
    toast(page, "merge.combos.soft_mix: the name is taken")
    page.get_by_role("tab", name="Draw").click()
    page.locator("#blocks textarea").fill("")


def test_three_browsers_at_once_and_cancel_stops_only_its_own(browser, server):
    """Three people at the UI: one long drawing runs, two wait in gradio's queue; the second's Cancel
    drops its own queued drawing and not the one running; the third gets its picture; then Cancel on
    the first's next drawing stops it, and the UI goes on drawing."""
    outside = []
    a, b, c = (open_page(browser, server, outside) for _ in range(3))
    try:
        for page, steps in ((a, 150), (b, 20), (c, 20)):
            page.get_by_label("Prompt", exact=True).fill(f"a rocket, {steps} steps")
            set_slider(page, "steps", steps)
        a.get_by_role("button", name="Generate").click()
        expect(a.get_by_text(re.compile(r"step \d+/150")).first).to_be_visible(timeout=DRAW)  # a draws
        b.get_by_role("button", name="Generate").click()
        c.get_by_role("button", name="Generate").click()
        b.get_by_role("button", name="Cancel").click()
        expect(a.locator("#result img")).to_be_visible(timeout=DRAW)  # b's Cancel left a's drawing alone
        expect(c.locator("#result img")).to_be_visible(timeout=DRAW)
        assert json.loads(png_at(a, "#result").text["stylemix"])["steps"] == 150
        assert b.locator("#result img").count() == 0  # its queued drawing was dropped
        drawn = a.locator("#result img").get_attribute("src")
        a.get_by_role("button", name="Generate").click()
        expect(a.get_by_text(re.compile(r"step \d+/150")).first).to_be_visible(timeout=DRAW)
        a.get_by_role("button", name="Cancel").click()
        b.get_by_role("button", name="Generate").click()  # the pipeline is free again
        expect(b.locator("#result img")).to_be_visible(timeout=DRAW)
        assert a.locator("#result img").get_attribute("src") == drawn  # a's cancelled drawing never arrived
        for page in (a, b, c):  # a Cancel is no error
            assert not page.get_by_text("Traceback").count() and not page.get_by_text(re.compile("^Error")).count()
    finally:
        for page in (a, b, c):
            page.context.close()
    assert not outside, f"the pages asked other hosts: {outside}"


def test_bad_input_gets_a_message_on_the_page(page, workspace, tmp_path):
    page.get_by_label("Prompt", exact=True).fill("")
    page.get_by_role("button", name="Generate").click()
    toast(page, "the prompt is empty")
    page.get_by_label("Prompt", exact=True).fill("a cat " * 20_000)
    page.get_by_role("button", name="Generate").click()
    toast(page, "the prompt is 120,000 characters; at most 4,000")
    bomb_png(tmp_path / "bomb.png")
    (tmp_path / "text.png").write_text("not a picture")
    for name, said in (("bomb.png", "bomb.png: too many pixels for a drawing"), ("text.png", "text.png: not a PNG image")):
        page.locator("#load input[type=file]").set_input_files(tmp_path / name)
        toast(page, said)
        page.reload()  # the upload box shows the refused file; a fresh page takes the next
        box("openmoji", page).wait_for()
    page.get_by_label("Prompt", exact=True).fill("a cat")
    page.get_by_role("tab", name="Grid").click()
    pick(page, "X axis", "weight:openmoji")
    page.get_by_label("X values").fill("0, 5")
    page.get_by_role("button", name="Draw grid").click()
    toast(page, "out of range")
    pick(page, "X axis", "seed")
    page.get_by_label("X values").fill("0-99 [100]")
    pick(page, "Y axis", "seed")
    page.get_by_label("Y values").fill("0-99 [100]")
    page.get_by_role("button", name="Draw grid").click()
    toast(page, "100 x 100 cells: at most 64")
    page.get_by_role("tab", name="Save mix").click()
    page.get_by_label("Combination name").fill("../x")
    page.get_by_role("button", name="Save mix to params.yaml").click()
    toast(page, "combination name '../x': use lowercase letters")
    page.get_by_role("tab", name="Draw").click()
    combo = sorted(p for p in (workspace / "models/merged").iterdir() if p.is_dir())[0]
    shutil.move(combo, workspace / "moved")  # deleted while the UI runs
    try:
        box(combo.name, page).check()
        page.get_by_role("button", name="Generate").click()
        toast(page, f"no trained style or merged combination named '{combo.name}'")
    finally:
        shutil.move(workspace / "moved", combo)
    assert not page.get_by_text("Traceback").count()
