"""Every code block in the README is either run by a test (sh, python), validated (yaml) or marked
as plain text, so the README cannot drift from the code. The e2e blocks run in test_pipeline.py."""
import itertools
import argparse
import re
import shlex
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from stylemix import params
from stylemix.commands.sweep import add_arguments
from stylemix.plots import heatmaps
from tests.conftest import ROOT
from tests.readme import block, commands, fences

TESTS = ROOT / "tests"


def test_every_block_is_labelled_and_every_command_block_is_run_by_a_test():
    used = "".join(p.read_text() for p in TESTS.glob("test_*.py"))
    for kind, name, lang, text in fences():
        assert lang in ("sh", "python", "yaml", "text"), f"README block without a known language:\n{text}"
        if lang in ("sh", "python"):
            assert kind == "run", f"README {lang} block has no `<!-- run: NAME -->` marker:\n{text}"
            assert re.search(rf"(block|commands)\((\w+, )?\"{name}\"", used), f"no test runs README block {name!r}"


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


@pytest.mark.parametrize("index", [i for i, f in enumerate(fences()) if f[2] == "yaml"])
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
    assert p.base.model == "runwayml/stable-diffusion-v1-5" and p.base.resolution == 512
    assert all(s.source.startswith("data/raw/") for s in p.styles.values())


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
