"""Held-out validation on the tiny model: the split, the fixed loss, training's report of it, and the
cross-style matrix of the validate stage agreeing with training."""
import json

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors import safe_open

from stages.caption import caption_style
from stages.encode import encode_style
from stages.filter import filter_style
from stages.validate import loss_matrix, summarize
from stylemix import params
from stylemix.adapters.lora_files import add_lora
from stylemix.demo.sample import build_style
from stylemix.errors import StyleMixError
from stylemix.models.base_model import load_pipeline
from stylemix.paths import heldout_file, latents_file
from stylemix.training.loop import train_style
from stylemix.training.validation import adapters_off, heldout_loss, load_heldout

STYLES = ("openmoji", "flat")


def make_params(model, root, **train) -> params.Params:
    return params.validate({
        "base": {"model": str(model), "resolution": 32},
        "styles": {s: {"source": str(root / "src" / s), "trigger": f"{s[:3]}style"} for s in STYLES},
        "lora": {"rank": 4, "alpha": 4},
        "validation": {"split": 2, "timesteps": [100, 500, 900]},
        "train": {"max_steps": 8, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 100, "validate_every": 4,
                  "validation_steps": 2, "validation_prompts": ["a cat"]} | train,
    })


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model):
    """Both styles' images (6 + the 3 repaired edge cases each), filtered, captioned, and encoded with 2 held out."""
    root = tmp_path_factory.mktemp("validation")
    p = make_params(tiny_model, root)
    for style in STYLES:
        (root / "src" / style).mkdir(parents=True)
        build_style(style, root / "src" / style, count=6, seed=0)
        filter_style(style, p.styles[style], params.Filter(), p.base, root / "filtered", root / "reports")
        caption_style(style, params.Caption(), root / "filtered", root / "captions")
        encode_style(style, p.styles[style], p.base, root / "filtered", root / "captions", root / "latents", heldout=2, seed=0)
    return root


def files(path) -> list[str]:
    with safe_open(path, "pt") as f:
        return json.loads(f.metadata()["files"])


def test_heldout_images_are_cached_apart_and_the_split_is_seeded(data, tiny_model, tmp_path):
    trained, held = files(latents_file("flat", data / "latents")), files(heldout_file("flat", data / "latents"))
    assert len(held) == 2 and len(trained) == 7 and not set(held) & set(trained)
    assert len(load_heldout("flat", data / "latents")) == 2
    p = make_params(tiny_model, data)
    again = encode_style("flat", p.styles["flat"], p.base, data / "filtered", data / "captions", tmp_path, heldout=2, seed=0)
    assert files(heldout_file("flat", tmp_path)) == held and len(again) == 7
    encode_style("flat", p.styles["flat"], p.base, data / "filtered", data / "captions", tmp_path, heldout=0)
    assert load_heldout("flat", tmp_path) is None and len(files(latents_file("flat", tmp_path))) == 9
    with pytest.raises(StyleMixError, match="validation_split = 8 leaves 1 of its 9"):
        encode_style("flat", p.styles["flat"], p.base, data / "filtered", data / "captions", tmp_path, heldout=8)


def test_heldout_loss_is_fixed_and_moves_only_with_the_weights(data, tiny_model):
    pipe = load_pipeline(str(tiny_model))
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    held = load_heldout("openmoji", data / "latents").groups()
    first = heldout_loss(pipe.unet, scheduler, held, [100, 500, 900], seed=0)
    assert first == heldout_loss(pipe.unet, scheduler, held, [100, 500, 900], seed=0)
    assert set(first) == {"t100", "t500", "t900", "mean"} and first["t100"] != first["t900"]
    assert heldout_loss(pipe.unet, scheduler, held, [100, 500, 900], seed=1) != first  # other noise
    add_lora(pipe.unet, [], params.Lora(rank=4, alpha=4))
    with torch.no_grad():
        for name, weight in pipe.unet.named_parameters():
            if "lora_B" in name:
                weight.fill_(0.05)
    assert heldout_loss(pipe.unet, scheduler, held, [100, 500, 900], seed=0) != first
    with adapters_off(pipe.unet):
        assert heldout_loss(pipe.unet, scheduler, held, [100, 500, 900], seed=0) == first
    with pytest.raises(StyleMixError, match="below the model's 1000 training timesteps"):
        heldout_loss(pipe.unet, scheduler, held, [1000], seed=0)


def test_training_reports_heldout_loss_and_the_matrix_agrees(data, tiny_model, tmp_path):
    p = make_params(tiny_model, data)
    summaries = {s: train_style(s, p, out=tmp_path / "lora", ckpt_root=tmp_path / "ckpt", logs=tmp_path / "logs",
                                latents=data / "latents") for s in STYLES}
    for style, summary in summaries.items():
        assert set(summary["val_loss_by_timestep"]) == {"t100", "t500", "t900", "mean"}
        assert summary["val_loss"] != summary["val_loss_base"]
        curve = (tmp_path / f"logs/{style}/plots/metrics/val_loss.tsv").read_text().splitlines()
        assert [row.split("\t")[0] for row in curve[1:]] == ["4", "8"]
        assert json.loads((tmp_path / f"logs/{style}/metrics.json").read_text())["val_loss_base"] == summary["val_loss_base"]
    rows = loss_matrix(load_pipeline(str(tiny_model)), list(STYLES), p.validation, data / "latents", tmp_path / "lora")
    metrics = summarize(rows, p.validation)
    assert list(metrics["loss"]) == ["base", *STYLES] and all(list(r) == list(STYLES) for r in metrics["loss"].values())
    for style, summary in summaries.items():  # the stage loads the saved LoRA; training evaluated it live
        assert metrics["loss"][style][style] == pytest.approx(summary["val_loss"], rel=1e-5)
        assert metrics["loss"]["base"][style] == pytest.approx(summary["val_loss_base"], rel=1e-5)
        assert metrics["own_gain_over_base"][style] == pytest.approx(summary["val_loss_base"] - summary["val_loss"], rel=1e-4)


def test_a_lora_that_does_not_move_gains_nothing(data, tiny_model, tmp_path):
    summary = train_style("flat", make_params(tiny_model, data, lr=1e-30, max_steps=2, validate_every=None),
                          out=tmp_path / "lora", ckpt_root=tmp_path / "ckpt", logs=tmp_path / "logs", latents=data / "latents")
    assert summary["val_loss"] == pytest.approx(summary["val_loss_base"], abs=1e-6)


def test_latents_encoded_at_another_resolution_are_refused(data, tiny_model, tmp_path):
    p = make_params(tiny_model, data)
    p = p.model_copy(update={"base": p.base.model_copy(update={"resolution": 64})})
    with pytest.raises(StyleMixError, match="encoded at 32 px, not base.resolution = 64; rerun `dvc repro encode@flat`"):
        train_style("flat", p, out=tmp_path / "lora", ckpt_root=tmp_path / "ckpt", logs=tmp_path / "logs",
                    latents=data / "latents")
