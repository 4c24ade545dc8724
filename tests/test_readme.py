"""Every code block in the README and docs/ is either run by a test (sh, python), validated (yaml) or
marked as plain text, so the documents cannot drift from the code. The e2e blocks run in
test_pipeline.py. The README stays a short front door, and every link between the documents lands."""
import argparse
import itertools
import re
import shlex
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from stylemix import params
from stylemix.commands.sweep import add_arguments
from stylemix.evaluation.plots import heatmaps
from tests.conftest import ROOT
from tests.readme import README, block, commands, documents, fences

TESTS = ROOT / "tests"


def test_every_block_is_labelled_and_every_command_block_is_run_by_a_test():
    used = "".join(p.read_text() for p in TESTS.glob("test_*.py"))
    for kind, name, lang, text in fences():
        assert lang in ("sh", "python", "yaml", "text"), f"block without a known language:\n{text}"
        if lang in ("sh", "python"):
            assert kind == "run", f"{lang} block has no `<!-- run: NAME -->` marker:\n{text}"
            assert re.search(rf"(block|commands)\((\w+, )?\"{name}\"", used), f"no test runs block {name!r}"


def test_readme_is_a_short_front_door():
    assert len(README.read_text().splitlines()) <= 250


CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def slugs(doc) -> set[str]:
    """The anchors GitHub gives a document's headings: lowercase, punctuation but hyphens dropped,
    spaces as hyphens, a repeated heading numbered -1, -2..."""
    seen, out = {}, set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S), re.M):
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def broken_links(doc) -> list[str]:
    """Every relative link or image in a document that names no file, or an anchor no heading has."""
    broken = []
    for target in LINK.findall(CODE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (file.suffix != ".md" or anchor not in slugs(file)):
            broken.append(f"{target}: no such heading")
    return broken


@pytest.mark.parametrize("doc", documents(), ids=lambda d: str(d.relative_to(ROOT)))
def test_every_link_and_image_lands(doc):
    broken = broken_links(doc)
    assert not broken, f"{doc.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_every_docs_page_is_in_the_readmes_map():
    linked = set(LINK.findall(CODE.sub("", README.read_text())))
    assert [d for d in documents()[1:] if f"docs/{d.name}" not in linked] == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## The demo: six sets?\n\n```sh\n# not a heading\n```\n")
    (tmp_path / "pic.png").write_bytes(b"")
    good = "[x](a.md#the-demo-six-sets) [y](#top) ![p](pic.png) [z](https://example.com/none) `[c](none.md)`"
    bad = "[x](a.md#not-a-heading) [y](#nope) ![p](none.png) [z](gone.md#top)"
    (tmp_path / "b.md").write_text(f"# Top\n\n{good}\n\n{bad}\n")
    assert [b.split(":")[0] for b in broken_links(tmp_path / "b.md")] == ["a.md#not-a-heading", "#nope", "none.png", "gone.md#top"]


def test_make_block_is_the_makefile_and_ci():
    makefile = (ROOT / "Makefile").read_text()
    recipes = dict(re.findall(r"^(\w+):[^\n]*\n\t(?:[^\n]*\n\t)*?([^\n]*(?:dvc repro|pytest)[^\n]*)$", makefile, re.M))
    assert [c.split()[:2] for c in commands("make")] == [["make", "repro"], ["make", "test"]]
    assert recipes["repro"].strip() == "dvc repro" and "pytest" in recipes["test"]
    assert "make test" in (ROOT / ".ci/run").read_text()


def merged(base: dict, fragment: dict) -> dict:
    out = dict(base)
    for key, value in fragment.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


DVC_YAML = {"artifact"}  # yaml blocks of dvc.yaml, not params.yaml


@pytest.mark.parametrize("index", [i for i, f in enumerate(fences()) if f[2] == "yaml" and f[1] not in DVC_YAML])
def test_yaml_blocks_are_valid_params(index, tmp_path):
    demo = yaml.safe_load((ROOT / "params.yaml").read_text())
    fragment = yaml.safe_load(fences()[index][3])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merged(demo, fragment)))
    params.load(*fragment, path=tmp_path / "params.yaml")


def test_preset_block_gives_valid_params(tmp_path):
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    for line in commands("preset"):
        subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True, timeout=60)
    p = params.load("base", "styles", "lora", "train", path=tmp_path / "params.yaml")
    assert p.base.model == "stable-diffusion-v1-5/stable-diffusion-v1-5" and p.base.resolution == 512
    assert all(s.source.startswith("data/raw/") for s in p.styles.values())


def test_a_new_styles_registry_entry_is_read_by_dvc(tmp_path):
    """docs/experiments.md's artifact entry for the own style (ink), added to the demo's dvc.yaml, is what
    DVC's own reader resolves, at the folder train@ink writes."""
    from dvc.repo import Repo

    style = yaml.safe_load(block("own-style-params"))["styles"]
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["styles"] |= style
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    pipeline["artifacts"] |= yaml.safe_load(block("artifact"))["artifacts"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=120)
    (name,) = style
    ink = Repo(str(tmp_path)).artifacts.read()["dvc.yaml"][name]
    assert ink.path == f"models/lora/{name}" and ink.type == "model"
    assert {f"style-{name}", f"rank-{raw['lora']['rank']}", f"base-{raw['base']['model']}"} <= set(ink.labels)


def test_own_style_params_block_declares_a_raw_folder():
    fragment = yaml.safe_load(block("own-style-params"))
    (name, style), = fragment["styles"].items()
    assert style["source"] == f"data/raw/{name}" and f"data/raw/{name}" in block("own-style")


def test_sdxl_preset_and_its_sweep_are_valid_params(tmp_path):
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    copy, repro, queue, start, draw = commands("sdxl-preset")
    subprocess.run(["bash", "-c", copy], cwd=tmp_path, check=True, timeout=60)
    path = tmp_path / "params.yaml"
    p = params.load("base", "lora", "train", path=path)
    assert p.base.model == "stabilityai/stable-diffusion-xl-base-1.0" and p.base.vae == "madebyollin/sdxl-vae-fp16-fix"
    assert (p.base.resolution, p.train.batch_size, p.train.epochs, p.train.lr, p.lora.rank, p.lora.alpha) == (512, 1, 100, 1e-4, 4, 8)
    assert (repro, start, draw) == ("dvc repro", "dvc queue start", "stylemix sweep")
    # Every experiment of the queued sweep is a valid params file (what `-S` would write).
    sweep = [[(key, value) for value in values.split(",")] for key, values in re.findall(r"-S ([\w.]+)=(\S+)", queue)]
    assert [len(axis) for axis in sweep] == [3, 4]
    preset = yaml.safe_load(path.read_text())
    for experiment in itertools.product(*sweep):
        raw = yaml.safe_load(path.read_text())
        for key, value in experiment:
            section, name = key.split(".")
            raw[section][name] = yaml.safe_load(value)
        path.write_text(yaml.safe_dump(raw))
        assert params.load("lora", path=path).lora.rank == raw["lora"]["rank"]
    assert preset["lora"] != raw["lora"]



@pytest.mark.parametrize("lines, rows", [(commands("targets-sweep"), ["attn", "all", "style"]), (commands("types-sweep"), ["lora", "dora", "loha", "lokr"])],
                         ids=["targets", "types"])
def test_lora_sweeps_are_valid_params_and_a_sweep_over_them(tmp_path, lines, rows):
    """The README's targets and types sweeps: every experiment each queues is a valid params file, and
    `stylemix sweep` reads its two params as rows and columns (a preset or type name is a row label)."""
    queue, start, sweep_line = lines
    axes = [[(key, value) for value in values.split(",")] for key, values in re.findall(r"-S ([\w.]+)=(\S+)", queue)]
    keys = [key for key, _ in (axis[0] for axis in axes)]
    assert keys[1] == "lora.conv_rank" and start == "dvc queue start"
    path = tmp_path / "params.yaml"
    for experiment in itertools.product(*axes):
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        for key, value in experiment:
            raw["lora"][key.split(".")[1]] = yaml.safe_load(value)
        path.write_text(yaml.safe_dump(raw))
        lora = params.load("lora", path=path).lora
        assert [getattr(lora, key.split(".")[1]) for key in keys] == [raw["lora"][key.split(".")[1]] for key in keys]
    assert [value for _, value in axes[0]] == rows
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(shlex.split(sweep_line)[2:])
    assert (args.rows, args.cols, len(args.metric)) == (keys[0], "lora.conv_rank", 2)
    table = pd.DataFrame([[0.5, 0.4]] * len(rows), index=rows, columns=[0, 4])
    heatmaps([("val_loss", table)], args.rows, args.cols, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
