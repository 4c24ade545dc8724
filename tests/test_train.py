"""Training on the tiny model: determinism, resume, file formats, bad input."""
import shutil

import pytest
import torch
from accelerate.state import AcceleratorState

from stages.caption import caption_style
from stages.encode import encode_style
from stages.filter import filter_style
from stylemix import params
from stylemix.base_model import load_pipeline
from stylemix.demo_data import build_style
from stylemix.errors import StyleMixError
from stylemix.load_check import adapter_deltas, kohya_dora_deltas
from stylemix.training import batch_indices, train_style

RESOLUTION = 32


def make_params(model, source, **train) -> params.Params:
    return params.validate({
        "base": {"model": str(model), "resolution": RESOLUTION},
        "styles": {"pixelart": {"source": str(source), "trigger": "pixstyle", "resample": "nearest"}},
        "lora": {"rank": 4, "alpha": 2, "targets": "attn"},
        "train": {"max_steps": 6, "batch_size": 2, "lr": 1e-2, "checkpoint_every": 2, "validation_steps": 2,
                  "validation_prompts": ["a cat"], "caption_dropout": 0.2} | train,
    })


def prepare(name: str, root, p: params.Params) -> None:
    """The style's images in root/src (made by build_style), filtered, captioned and encoded under root."""
    filter_style(name, p.styles[name], params.Filter(), p.base.resolution, root / "filtered", root / "reports")
    caption_style(name, params.Caption(), root / "filtered", root / "captions")
    encode_style(name, p.styles[name], p.base, root / "filtered", root / "captions", root / "latents")


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model):
    """Six pixel-art images filtered, captioned and encoded into a temp dir."""
    root = tmp_path_factory.mktemp("train")
    (root / "src").mkdir()
    build_style("pixelart", root / "src", count=6, seed=0)
    prepare("pixelart", root, make_params(tiny_model, root / "src"))
    return root


def train(data, tmp_path, p, on_step=None, run="a") -> dict:
    return train_style("pixelart", p, on_step, out=tmp_path / run / "lora", ckpt_root=tmp_path / run / "ckpt",
                       logs=tmp_path / run / "logs", latents=data / "latents")


def weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result["trainables"].items()}


def logged_images(run) -> dict[str, bytes]:
    folder = run / "logs/pixelart/plots/images"
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*.png"))}


def test_same_params_same_weights_and_resume_is_bit_exact(data, tmp_path, tiny_model):
    p = make_params(tiny_model, data / "src", validate_every=2)
    first = weights(train(data, tmp_path, p, run="a"))
    again = weights(train(data, tmp_path, p, run="b"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)

    def killed_at_3(step, _):
        if step == 3:
            raise KeyboardInterrupt  # the stage dies after step 3; its last checkpoint is step 2
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path, p, killed_at_3, run="c")
    assert sorted(d.name for d in (tmp_path / "c/ckpt/pixelart").iterdir()) == ["step-000002"]
    steps_run = []
    resumed = weights(train(data, tmp_path, p, lambda step, _: steps_run.append(step), run="c"))
    assert steps_run == [3, 4, 5, 6]
    assert all(torch.equal(first[k], resumed[k]) for k in first)
    loss_rows = (tmp_path / "c/logs/pixelart/plots/metrics/loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in loss_rows[1:]] == ["1", "2", "3", "4", "5", "6"]
    # The validation images of steps before the kill come back from the checkpoint; a rerun of a
    # finished run (dvc repro after a dependency changed) trains nothing and keeps every one.
    images = logged_images(tmp_path / "a")
    assert sorted(images) == [f"step-00000{s}/validation_0.png" for s in (2, 4, 6)]
    assert logged_images(tmp_path / "c") == images
    steps_run.clear()
    train(data, tmp_path, p, lambda step, _: steps_run.append(step), run="c")
    assert steps_run == [] and logged_images(tmp_path / "c") == images


def test_changed_settings_never_resume_old_checkpoints(data, tmp_path, tiny_model):
    train(data, tmp_path, make_params(tiny_model, data / "src"))
    steps_run = []
    train(data, tmp_path, make_params(tiny_model, data / "src", lr=5e-3), lambda s, _: steps_run.append(s))
    assert steps_run == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("text_encoder, kind", [(False, "lora"), (True, "lora"), (False, "dora")], ids=["unet", "text-encoder", "dora"])
def test_saved_lora_reproduces_the_trained_model(data, tmp_path, tiny_model, text_encoder, kind):
    p = make_params(tiny_model, data / "src")
    p = p.model_copy(update={"lora": p.lora.model_copy(update={"text_encoder": text_encoder, "type": kind, "conv_rank": 2})})
    trained = train(data, tmp_path, p)["pipe"]
    folder = tmp_path / "a/lora/pixelart"
    torch.manual_seed(0)
    x, t, ids = torch.randn(2, 4, 4, 4), torch.tensor([10, 700]), trained.tokenizer(["pixstyle, a cat"] * 2).input_ids

    def outputs(pipe):
        with torch.no_grad():
            hidden = pipe.text_encoder(torch.tensor(ids))[0]
            return hidden, pipe.unet(x, t, hidden).sample

    expected = outputs(trained)
    base = outputs(load_pipeline(str(tiny_model)))
    for source in (folder, folder / "pixelart_kohya.safetensors"):  # diffusers layout, then kohya's
        fresh = load_pipeline(str(tiny_model))
        if kind == "dora" and source.suffix:  # LyCORIS's dora_scale, which diffusers drops: by its formula
            with torch.no_grad():
                for module, delta in kohya_dora_deltas(source, fresh, {"unet": list(adapter_deltas(trained)["unet"])})["unet"].items():
                    fresh.unet.get_submodule(module).weight += delta.reshape(fresh.unet.get_submodule(module).weight.shape)
        else:
            fresh.load_lora_weights(source)
        got = outputs(fresh)
        assert torch.allclose(got[1], expected[1], atol=1e-5), source
        assert torch.allclose(got[0], expected[0], atol=1e-5), source
    assert (expected[1] - base[1]).abs().max() > 1e-3  # the LoRA changed the model
    assert ((expected[0] - base[0]).abs().max() > 1e-3) == text_encoder
    assert (folder / "validation.png").is_file() and "pixstyle" in (folder / "README.md").read_text()
    assert f"| {kind} |" in (folder / "README.md").read_text()


def test_nan_loss_stops_with_the_step_and_keeps_last_checkpoint(data, tmp_path, tiny_model):
    def poison(step, trainables):
        if step == 2:
            next(iter(trainables.values())).data.fill_(float("nan"))
    with pytest.raises(StyleMixError, match=r"loss is nan at step 3 with mixed_precision = no; set train.mixed_precision: no or lower train.lr"):
        train(data, tmp_path, make_params(tiny_model, data / "src"), poison)
    assert [d.name for d in (tmp_path / "a/ckpt/pixelart").iterdir()] == ["step-000002"]


def test_bf16_mixed_precision_keeps_lora_in_float32(data, tmp_path, tiny_model):
    AcceleratorState._reset_state(True)
    try:
        result = train(data, tmp_path, make_params(tiny_model, data / "src", mixed_precision="bf16", max_steps=2))
    finally:
        AcceleratorState._reset_state(True)
    assert all(v.dtype == torch.float32 for v in result["trainables"].values())
    assert result["pipe"].unet.conv_in.weight.dtype == torch.bfloat16
    assert torch.isfinite(torch.tensor(result["final_loss"]))


@pytest.mark.parametrize(("train_edits", "lora_edits", "expected"), [
    ({"batch_size": 100}, {}, r"style pixelart: 9 images x 1 repeats, fewer than one step's batch .* raise styles.pixelart.repeats"),
    ({"mixed_precision": "fp16"}, {}, r"fp16 needs a CUDA GPU"),
    ({}, {"targets": ["to_z"]}, r"lora.targets: to_z not in the UNet; its layers include: .*to_q"),
])
def test_bad_input_is_one_clear_line(data, tmp_path, tiny_model, train_edits, lora_edits, expected):
    p = make_params(tiny_model, data / "src", **train_edits)
    p = p.model_copy(update={"lora": p.lora.model_copy(update=lora_edits)})
    with pytest.raises(StyleMixError, match=expected):
        train(data, tmp_path, p)


def test_repeats_show_every_image_that_many_times_an_epoch(data, tmp_path, tiny_model):
    cfg = params.Train(batch_size=3, seed=1)
    for repeats in (1, 2):  # 6 images, batches of 3: an epoch is 2 steps a repeat
        epoch = torch.cat([batch_indices(step, 0, 6, 2 * repeats, cfg, 1, 0, repeats) for step in range(2 * repeats)])
        assert sorted(epoch.tolist()) == sorted(list(range(6)) * repeats)
    p = make_params(tiny_model, data / "src", max_steps=None, epochs=1)
    p = p.model_copy(update={"styles": {"pixelart": p.styles["pixelart"].model_copy(update={"repeats": 2})}})
    assert train(data, tmp_path, p)["steps"] == 9  # 9 images x 2 repeats, batch 2
    assert "| 9 x 2 |" in (tmp_path / "a/lora/pixelart/README.md").read_text()  # the model card says so


def test_missing_latents(tmp_path, tiny_model):
    with pytest.raises(StyleMixError, match=r"run `dvc repro encode@pixelart`"):
        train_style("pixelart", make_params(tiny_model, tmp_path), latents=tmp_path)


def test_per_style_override():
    p = params.validate({"styles": {"a": {"source": "x", "trigger": "t", "train": {"epochs": 40}}}, "train": {"epochs": 5}})
    assert params.train_for(p, "a").epochs == 40 and params.train_for(p, "a").lr == p.train.lr


def launch_two_processes(workdir, latents, p: params.Params, style: str) -> str:
    """`accelerate launch` of train@style with 2 CPU processes (gloo), as users launch several
    GPUs, in workdir with p as its params.yaml; returns its stdout."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT

    shutil.copytree(latents, workdir / "data/latents")
    raw = p.model_dump(exclude_none=True)
    raw.setdefault("validation", {"split": 0})  # the stage reads the section; these latents hold nothing out
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run([*launcher, "-m", "stages.train", style], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_two_cpu_processes_write_a_valid_lora(data, tmp_path, tiny_model):
    log = launch_two_processes(tmp_path, data / "latents", make_params(tiny_model, data / "src"), "pixelart")
    assert log.count("train pixelart: 6 of 6 steps") == 1  # one summary, from the main process
    fresh = load_pipeline(str(tiny_model))
    fresh.load_lora_weights(tmp_path / "models/lora/pixelart")
    assert fresh.unet.peft_config["default_0"].r == 4


def test_training_options_run_together(data, tmp_path, tiny_model):
    options = {"max_steps": 2, "gradient_accumulation": 2, "gradient_checkpointing": True, "scheduler": "linear",
               "warmup_steps": 1, "noise_offset": 0.1, "min_snr_gamma": None, "random_flip": False,
               "channels_last": False, "caption_dropout": 0.5, "validate_every": 1, "batch_size": 1}
    result = train(data, tmp_path, make_params(tiny_model, data / "src", **options))
    assert result["steps"] == 2 and torch.isfinite(torch.tensor(result["final_loss"]))
    images = sorted(q.parent.name for q in (tmp_path / "a/logs/pixelart").rglob("validation_0.png"))
    assert images == ["step-000001", "step-000002"]


def test_debiased_estimation_weights_each_sample_by_one_over_root_snr():
    """kohya's debiased estimation: the same draw's loss divided by sqrt(SNR(t)). A two-step noise
    schedule makes SNR(t) 9 or 18/7, so each seed's ratio must be one of 1/3 and sqrt(7/18)."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from stylemix.training import diffusion_loss

    scheduler = DDPMScheduler(num_train_timesteps=2, beta_start=0.1, beta_end=0.2, beta_schedule="linear")
    latents = {"mean": torch.randn(1, 4, 8, 8), "std": torch.zeros(1, 4, 8, 8)}
    data = latents | {f"{k}_flipped": v for k, v in latents.items()} | {"text_hidden": torch.zeros(1, 77, 32),
                                                                     "empty_text_hidden": torch.zeros(1, 77, 32)}
    unet = lambda noisy, t, cond, **kw: SimpleNamespace(sample=torch.zeros_like(noisy))  # noqa: E731 loss = mean(noise^2)

    def loss(seed: int, **cfg) -> float:
        train = params.Train(random_flip=False, min_snr_gamma=None, **cfg)
        return float(diffusion_loss(unet, scheduler, data, torch.tensor([0]), train, torch.Generator().manual_seed(seed)))

    ratios = {round(loss(seed, debiased_estimation=True) / loss(seed), 5) for seed in range(12)}
    assert ratios == {round(1 / 3, 5), round((7 / 18) ** 0.5, 5)}
