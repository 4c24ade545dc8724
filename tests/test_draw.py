"""`stylemix draw`: one picture, a batch from a prompts file, and LoRAs fused into the weights."""
import argparse
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from stylemix.commands import draw
from stylemix.errors import StyleMixError
from tests.e2e import ENV
from tests.readme import commands
from tests.ui_workspace import make_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("draw"))


def run(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    draw.add_arguments(parser)
    draw.run(parser.parse_args([*argv, "--steps", "4"]))


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=float)


def test_a_csv_batch_draws_each_row_with_its_own_seed_and_weights(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    (workspace / "shots.csv").write_text('prompt,negative,seed,weights\n"a cat, close-up",,,\na rocket,ugly,7,\n'
                                         "a cat,,,lineart=0.5 openmoji=0.25\n")
    run("--prompts", "shots.csv", "openmoji=0.6", "-o", "board", "--seed", "3", "--negative", "blurry, low quality")
    index = [json.loads(line) for line in (workspace / "board/index.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"], r["weights"]) for r in index] == [
        ("a cat, close-up", 3, {"openmoji": 0.6}), ("a rocket", 7, {"openmoji": 0.6}),
        ("a cat", 3, {"lineart": 0.5, "openmoji": 0.25})]
    assert index[1]["negative"] == "ugly" and index[0]["negative"] == "blurry, low quality"
    recipes = [json.loads(Image.open(workspace / "board" / r["file"]).text["stylemix"]) for r in index]
    assert [r["adapters"] for r in recipes] == [r["weights"] for r in index]


def test_fused_loras_draw_the_same_pictures(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    (workspace / "shots.txt").write_text("# a storyboard\na tabby cat with green eyes\n\na rocket on a launch pad\n")
    run("--prompts", "shots.txt", "openmoji=0.8", "lineart=0.4", "-o", "plain")
    run("--prompts", "shots.txt", "openmoji=0.8", "lineart=0.4", "-o", "fused", "--fuse")
    run("--prompts", "shots.txt", "-o", "base")
    run("--prompts", "shots.txt", "openmoji=0.8", "lineart=0.4", "-o", "single", "--batch-size", "1")
    for name in ("0000.png", "0001.png"):
        fused, plain, base, single = (pixels(workspace / d / name) for d in ("fused", "plain", "base", "single"))
        assert abs(fused - plain).mean() < 1 < abs(plain - base).mean()  # the same picture, which is not the base's
        assert abs(single - plain).max() <= 2  # both rows drawn in one batch, or one at a time
    assert json.loads(Image.open(workspace / "fused/0000.png").text["stylemix"])["fused"] is True


def test_bad_batches_say_what_to_do(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    (workspace / "own.csv").write_text("prompt,weights\na cat,lineart=1\n")
    with pytest.raises(StyleMixError, match="--fuse draws every row with the command line's styles"):
        run("--prompts", "own.csv", "openmoji=1", "--fuse", "-o", "x")
    (workspace / "bad.csv").write_text("text\na cat\n")
    with pytest.raises(StyleMixError, match="bad.csv: a CSV needs a `prompt` column"):
        run("--prompts", "bad.csv", "-o", "x")
    (workspace / "seed.csv").write_text("prompt,seed\na cat,three\n")
    with pytest.raises(StyleMixError, match="seed.csv line 2"):
        run("--prompts", "seed.csv", "-o", "x")
    with pytest.raises(SystemExit):
        run("--prompts", "own.csv", "--batch-size", "0", "-o", "x")
    assert "argument --batch-size: '0': give a whole number of 1 or more" in capsys.readouterr().err
    assert not (workspace / "x").exists()


def test_the_readme_mixing_block(workspace):
    """The workspace has openmoji and lineart: openmoji stands in for the README's fluent."""
    for line in commands("draw-mixing", {"fluent=0.5": "openmoji=0.5", "fluent=0-0.6": "openmoji=0-0.6"}):
        result = subprocess.run(["bash", "-c", line], cwd=workspace, env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    assert json.loads(Image.open(workspace / "cat.png").text["stylemix"])["schedules"] == {"openmoji": {"start": 0, "end": 0.6}}


def test_the_readme_batch_block(workspace):
    (workspace / "storyboard.txt").write_text("a tabby cat with green eyes\na rocket on a launch pad\n")
    for line in commands("draw-batch"):
        result = subprocess.run(["bash", "-c", line], cwd=workspace, env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    assert len(list((workspace / "storyboard").glob("*.png"))) == 2


def test_block_weights_and_schedules_change_the_picture_and_ride_in_its_recipe(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    mix = ("a tabby cat with green eyes", "openmoji=0.8", "lineart=0.6")
    run(*mix, "-o", "plain.png")
    run(*mix, "--blocks", "lineart=down:0,mid:0", "--schedule", "openmoji=0-0.5", "-o", "shaped.png")
    ones = ",".join(["1"] * 11)  # BASE + the demo tiny's 10 attention layers: no change
    run(*mix, "--blocks", f"lineart={ones}", "--schedule", "openmoji=0:1,1:1", "-o", "same.png")
    plain, shaped, same = (pixels(workspace / f"{name}.png") for name in ("plain", "shaped", "same"))
    assert abs(same - plain).mean() < 1e-3 < 1 < abs(shaped - plain).mean()
    recipe = json.loads(Image.open(workspace / "shaped.png").text["stylemix"])
    assert recipe["schedules"] == {"openmoji": {"start": 0, "end": 0.5}}
    assert recipe["blocks"]["lineart"]["down_blocks.0.attentions.0"] == 0 and recipe["blocks"]["lineart"]["text_encoder"] == 1


@pytest.mark.parametrize("flag, message", [
    ("--blocks=lineart=OUTSIDE", r"blocks of lineart = 'OUTSIDE': no such LBW preset"),
    ("--blocks=lineart=1,0", r"blocks of lineart: 2 numbers, but this UNet takes 11"),
    ("--blocks=lineart=down:x", r"--blocks 'lineart=down:x': Input should be a valid number"),
    ("--schedule=lineart=0.7-0.2", r"--schedule 'lineart=0.7-0.2': start 0.7 must be below end 0.2"),
    ("--schedule=fluent=0-0.5", r"a schedule for fluent, which is not drawn"),
    ("--blocks=lineart", r"--blocks 'lineart': write NAME=SPEC"),
])
def test_bad_block_weights_and_schedules_are_one_line(workspace, monkeypatch, flag, message):
    monkeypatch.chdir(workspace)
    with pytest.raises(StyleMixError, match=message):
        run("a cat", "lineart=0.6", flag, "-o", "never.png")
    assert not (workspace / "never.png").exists()


BROKEN = {  # damage: what the one line says
    "truncated": "not a readable safetensors file", "pickle": "not a readable safetensors file",
    "other shapes": "this base model has no layers it fits", "keys of nothing": "this base model has no layers it fits",
    "no metadata": "no stylemix facts in its metadata",
}


def damage_lora(path, damage: str) -> None:
    """Break a LoRA file as files get broken: cut short by a copy or a full disk, a pickle renamed
    .safetensors, made for another model's shapes (an SDXL LoRA on SD 1.5), kohya keys of layers no
    model has, a file from elsewhere without stylemix's metadata."""
    import pickle

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "pickle":
        path.write_bytes(pickle.dumps({"lora": [1.0] * 100}))
    elif damage == "other shapes":
        save_file({k: t.repeat(2, 1) if "lora_B" in k else t for k, t in tensors.items()}, path, metadata)
    elif damage == "keys of nothing":
        modules = sorted({k.rsplit(".lora_", 1)[0] for k in tensors})
        save_file({f"lora_unet_nothing_{modules.index(k.rsplit('.lora_', 1)[0])}.lora_{'up' if 'lora_B' in k else 'down'}.weight": t
                   for k, t in tensors.items()}, path, metadata)
    else:
        save_file(tensors, path)


@pytest.mark.parametrize("damage", BROKEN)
def test_a_broken_lora_file_is_one_line_naming_it(workspace, monkeypatch, damage):
    """A broken LoRA file (damage_lora): `stylemix draw` (the web UI's drawer), `export`, `publish` and
    merge@C say which file and what is wrong, with no traceback, write nothing, and unpickle nothing."""
    import shutil

    from stylemix import params
    from stylemix.mixing.merging import merge_combo
    from stylemix.models.base_model import load_pipeline

    broken = workspace / "models/lora/broken"
    shutil.copytree(workspace / "models/lora/openmoji", broken)
    try:
        path = broken / "pytorch_lora_weights.safetensors"
        damage_lora(path, damage)
        said = f"{path.relative_to(workspace)}: {BROKEN[damage]}"
        for command, output in ((["draw", "a cat", "broken=1", "--steps", "2", "-o", "broken.png"], "broken.png"),
                                (["export", "broken", "--fused", "broken.safetensors"], "broken.safetensors"),
                                (["publish", "broken", "--dry-run", "hub/broken"], "hub/broken")):
            result = subprocess.run(["stylemix", *command], cwd=workspace, env=ENV, capture_output=True, text=True, timeout=600)
            assert result.returncode == 2 and "Traceback" not in result.stderr, (command, result.stderr)
            assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1, (command, result.stderr)
            assert not (workspace / output).exists(), command
        monkeypatch.chdir(workspace)
        with pytest.raises(StyleMixError, match=said):  # merge@C's main raises it, run_stage prints it
            merge_combo("broken_mix", params.Combo(weights={"openmoji": 0.5, "broken": 0.5}), check_with=load_pipeline("tiny"))
        assert not (workspace / "models/merged/broken_mix").exists()
    finally:
        shutil.rmtree(broken)
