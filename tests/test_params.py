import subprocess
from pathlib import Path

import pytest
import yaml

from stylemix import params
from stylemix.errors import StyleMixError
from tests.conftest import ROOT

DEMO = yaml.safe_load((ROOT / "params.yaml").read_text())


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def changed(**edits) -> dict:
    """The demo params with dotted keys set (a value of DELETE removes the key)."""
    raw = yaml.safe_load(yaml.safe_dump(DEMO))
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = raw
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return raw


DELETE = object()


@pytest.mark.parametrize("preset", ["params.yaml"] + sorted(f"presets/{p.name}" for p in (ROOT / "presets").glob("*.yaml")))
def test_shipped_params_validate(preset):
    p = params.load("base", "styles", "filter", "caption", "tags", "lora", "train", "validation", "merge", "generate", "score",
                    path=ROOT / preset)
    assert p.styles and p.base.resolution % 8 == 0


def test_the_reference_presets_say_what_their_references_did():
    own = params.load("base", "styles", "caption", "train", path=ROOT / "presets/own-style.yaml")
    assert params.model_kind(own.base.model) == "single_file" and own.caption.backend == "blip2"
    assert own.styles["mystyle"].template == "{caption}, drawn by {trigger} drawing style"
    t = own.train
    assert (own.base.resolution, t.batch_size, t.epochs, t.scheduler, t.warmup_steps, t.random_flip) == (512, 1, 50, "cosine", 0, True)
    aware = params.load("base", "caption", "lora", "train", path=ROOT / "presets/caption-aware.yaml")
    assert (aware.lora.targets, aware.lora.rank, aware.lora.alpha, aware.base.resolution) == ("cross_attn_qv", 4, 8, 384)
    t = aware.train
    assert (t.lr, t.mixed_precision, t.gradient_accumulation, t.scheduler, t.checkpoint_every) == (5e-5, "fp16", 2, "constant", 100)
    assert aware.caption.backend == "blip" and any(s.overrides for s in params.load("styles", path=ROOT / "presets/caption-aware.yaml").styles.values())
    board = params.load("styles", path=ROOT / "presets/storyboard.yaml")
    assert set(board.styles["storyboard"].tokens) == {"<cu_trg>", "<ms_trg>", "<fs_trg>"}


def test_sd15_preset_is_the_main_reference():
    p = params.load("base", "styles", "lora", "train", path=ROOT / "presets/sd15.yaml")
    assert p.base.model == "stable-diffusion-v1-5/stable-diffusion-v1-5" and p.base.resolution == 512
    assert {n: s.trigger for n, s in p.styles.items()} == {
        "anime": "anistyle", "watercolor": "wcstyle", "cartoon": "ctstyle", "pixelart": "pixstyle"}
    assert (p.lora.rank, p.lora.alpha, p.lora.targets, p.lora.text_encoder) == (32, 16, "attn", True)
    t = p.train
    assert (t.lr, t.epochs, t.batch_size, t.mixed_precision) == (1e-4, 20, 2, "bf16")


def test_load_hides_undeclared_sections(tmp_path):
    p = params.load("filter", path=write(tmp_path, DEMO))
    assert p.filter.laplacian_min == 100
    assert p.styles is None and p.base is None  # a stage cannot read what dvc.yaml does not track


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        ({"filter__laplacain_min": 5}, "filter.laplacain_min: unknown key"),
        ({"lora__rank": 0}, "lora.rank = 0: Input should be greater than 0"),
        ({"lora__rank": "big"}, "lora.rank = 'big'"),
        ({"lora__targets": "stlye"}, "lora.targets = 'stlye'"),
        ({"lora__targets": []}, "lora.targets = []: List should have at least 1 item"),
        ({"lora__conv_rank": -1}, "lora.conv_rank = -1: Input should be greater than or equal to 0"),
        ({"lora__type": "locon"}, "lora.type = 'locon': Input should be 'lora', 'dora', 'loha' or 'lokr'"),
        ({"lora__type": "lokr", "lora__text_encoder": True}, "lora: type lokr with text_encoder: true: stylemix trains and loads"),
        ({"lora__type": "dora", "lora__text_encoder": True}, "lora: type dora with text_encoder: true: diffusers"),
        ({"styles__openmoji__trigger": DELETE}, "styles.openmoji.trigger: missing"),
        ({"styles__openmoji__trigger": "   "}, "styles.openmoji.trigger = '   ': must not be blank"),
        ({"styles__fluent__trigger": "omstyle"}, "trigger = 'omstyle' is also the trigger of styles."),
        ({"merge__combos": {"x": {"weights": {"openmoji": 0.5, "anime": 0.5}}}}, "merge.combos.x names unknown style(s) anime"),
        ({"merge__combos": {"x": {"weights": {"openmoji": 0.5, "lineart": 0.5}, "method": "ties"}}}, "needs an explicit density"),
        ({"base__model": "not-a-model"}, "base.model = 'not-a-model': not tiny, tiny-sdxl, tiny-flux, tiny-sd3, an existing diffusers folder"),
        ({"base__resolution": 100}, "base.resolution = 100: must be divisible by 8"),
        ({"base__vae": "vae.safetensors"}, "base.vae = 'vae.safetensors': must be a hub id or a diffusers VAE folder"),
        ({"styles__openmoji__resample": "cubic"}, "styles.openmoji.resample = 'cubic'"),
        ({"styles__openmoji__template": "{caption}"}, "must contain {trigger} and {caption}"),
        ({"styles": {"Water Color": {"source": "x", "trigger": "t"}}}, "style name 'Water Color'"),
        ({"styles__openmoji__repeats": 0}, "styles.openmoji.repeats = 0: Input should be greater than 0"),
        ({"base__buckets__step": 20}, "base.buckets.step = 20: must be divisible by 8"),
        ({"base__buckets__max_side": 48}, "base: buckets: min_side 32 to max_side 48 must hold the square bucket of resolution 64"),
    ],
)
def test_bad_value_is_one_line_naming_key(tmp_path, edits, expected):
    with pytest.raises(StyleMixError) as err:
        params.load("filter", path=write(tmp_path, changed(**edits)))
    message = str(err.value)
    assert expected in message
    assert "\n" not in message and message.startswith(str(tmp_path / "params.yaml")) and ": :" not in message


def test_model_kinds(tmp_path, tiny_model):
    assert params.model_kind("tiny") == "tiny"
    assert params.model_kind("stable-diffusion-v1-5/stable-diffusion-v1-5") == "hub"
    assert params.model_kind(str(tiny_model)) == "local"
    assert params.model_kind(str(tmp_path / "anything-v5.safetensors")) == "single_file"


def test_unreadable_params_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(StyleMixError, match="not valid YAML"):
        params.load("base", path=bad)
    with pytest.raises(StyleMixError, match="cannot read"):
        params.load("base", path=tmp_path / "missing.yaml")


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "presets").glob("*.yaml")) + ["params.yaml"])
def test_every_params_key_a_stage_names_is_in_the_preset(tmp_path, preset):
    """DVC refuses to run a stage whose params key is missing from params.yaml (`Parameters 'base.config' are
    missing`), defaults or not: with the preset as params.yaml, DVC itself reads every key of every stage."""
    import shutil

    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / ("presets/" + preset if preset != "params.yaml" else preset), tmp_path / "params.yaml")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=120)
    missing = []
    for stage in Repo(str(tmp_path)).index.stages:
        for dep in stage.deps:
            if isinstance(dep, ParamsDependency):
                missing += [f"{stage.addressing}: {key}" for key in dep.params if key not in dep.read_params()]
    assert not missing, missing
