"""Training on the tiny model: determinism, resume, file formats, bad input."""
import shutil

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from stages.caption import caption_style
from stages.encode import encode_style
from stages.filter import filter_style
from stylemix import params
from stylemix.adapters.load_check import adapter_deltas, kohya_deltas
from stylemix.adapters.loading import load_adapter
from stylemix.demo.sample import build_style
from stylemix.errors import StyleMixError
from stylemix.models.base_model import load_pipeline
from stylemix.training.batches import Batches
from stylemix.training.loop import open_latents, train_style

RESOLUTION = 32
# The `bucketed` style: aspect-ratio buckets in steps of 8 px (at 32 px, 40x24 and 24x40 hold the
# demo's 16:9 and 2:3 openmojis).
BUCKETED = {"buckets": {"enabled": True, "step": 8}}


def make_params(model, source, name="flat", **train) -> params.Params:
    style = {"trigger": "ffstyle", "resample": "nearest"} if name == "flat" else {"trigger": "omstyle"}
    return params.validate({
        "base": {"model": str(model), "resolution": RESOLUTION} | (BUCKETED if name == "openmoji" else {}),
        "styles": {name: {"source": str(source)} | style},
        "lora": {"rank": 4, "alpha": 2, "targets": "attn"},
        "train": {"max_steps": 6, "batch_size": 2, "lr": 1e-2, "checkpoint_every": 2, "validation_steps": 2,
                  "validation_prompts": ["a cat"], "caption_dropout": 0.2} | train,
    })


def prepare(name: str, root, p: params.Params) -> None:
    """The style's images in root/src (made by build_style), filtered, captioned and encoded under root."""
    filter_style(name, p.styles[name], params.Filter(), p.base, root / "filtered", root / "reports")
    caption_style(name, params.Caption(), root / "filtered", root / "captions")
    encode_style(name, p.styles[name], p.base, root / "filtered", root / "captions", root / "latents")


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model):
    """Six pixel-art images filtered, captioned and encoded into a temp dir."""
    root = tmp_path_factory.mktemp("train")
    (root / "src").mkdir()
    build_style("flat", root / "src", count=6, seed=0)
    prepare("flat", root, make_params(tiny_model, root / "src"))
    return root


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory, tiny_model):
    """Six openmojis (and the three repaired edge cases) in three aspect ratios, filtered into buckets."""
    root = tmp_path_factory.mktemp("buckets")
    (root / "src").mkdir()
    build_style("openmoji", root / "src", count=6, seed=0)
    prepare("openmoji", root, make_params(tiny_model, root / "src", "openmoji"))
    return root


def train(data, tmp_path, p, on_step=None, run="a", **where) -> dict:
    """train_style into tmp_path/run from data's latents; `where`: its other folders (prior_dir)."""
    name, = p.styles
    return train_style(name, p, on_step, out=tmp_path / run / "lora", ckpt_root=tmp_path / run / "ckpt",
                       logs=tmp_path / run / "logs", latents=data / "latents", **where)


def weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result["trainables"].items()}


def killed_after(data, tmp_path, p, step: int, run: str, **where) -> None:
    """Train until `step` is done, then die as a killed stage does (its last checkpoint: the one before)."""
    def die(at, _):
        if at == step:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path, p, die, run=run, **where)


def logged_images(run, name="flat") -> dict[str, bytes]:
    folder = run / f"logs/{name}/plots/images"
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*.png"))}


@pytest.mark.parametrize("name", ["flat", "openmoji"], ids=["square", "buckets"])
def test_same_params_same_weights_and_resume_is_bit_exact(request, tmp_path, tiny_model, name):
    data = request.getfixturevalue("bucketed" if name == "openmoji" else "data")
    p = make_params(tiny_model, data / "src", name, validate_every=2)
    first = weights(train(data, tmp_path, p, run="a"))
    again = weights(train(data, tmp_path, p, run="b"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    killed_after(data, tmp_path, p, 3, "c")  # its last checkpoint is step 2
    assert sorted(d.name for d in (tmp_path / f"c/ckpt/{name}").iterdir()) == ["step-000002"]
    steps_run = []
    resumed = weights(train(data, tmp_path, p, lambda step, _: steps_run.append(step), run="c"))
    assert steps_run == [3, 4, 5, 6]
    assert all(torch.equal(first[k], resumed[k]) for k in first)
    loss_rows = (tmp_path / f"c/logs/{name}/plots/metrics/loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in loss_rows[1:]] == ["1", "2", "3", "4", "5", "6"]
    # The validation images of steps before the kill come back from the checkpoint; a rerun of a
    # finished run (dvc repro after a dependency changed) trains nothing and keeps every one.
    images = logged_images(tmp_path / "a", name)
    assert sorted(images) == [f"step-00000{s}/validation_0.png" for s in (2, 4, 6)]
    assert logged_images(tmp_path / "c", name) == images
    steps_run.clear()
    train(data, tmp_path, p, lambda step, _: steps_run.append(step), run="c")
    assert steps_run == [] and logged_images(tmp_path / "c", name) == images


def test_an_unreadable_checkpoint_is_passed_over_for_the_one_before(data, tmp_path, tiny_model, capsys):
    """A killed run's newest checkpoint damaged after the fact (a disk that lost its last writes) and a
    half-written one beside it: the rerun says so in one line, resumes from the checkpoint before, and
    ends with the weights of an unbroken run."""
    p = make_params(tiny_model, data / "src")
    unbroken = weights(train(data, tmp_path, p, run="a"))
    killed_after(data, tmp_path, p, 5, "c")
    ckpt = tmp_path / "c/ckpt/flat"
    newest = ckpt / "step-000004/lora.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    (ckpt / ".step-000006.tmp").mkdir()
    (ckpt / ".step-000006.tmp/states.pt").write_bytes(b"half")
    capsys.readouterr()
    steps_run = []
    resumed = weights(train(data, tmp_path, p, lambda step, _: steps_run.append(step), run="c"))
    said = capsys.readouterr().out
    assert f"train: {ckpt / 'step-000004'} is unreadable (SafetensorError" in said and "passing over it" in said
    assert steps_run == [3, 4, 5, 6] and all(torch.equal(unbroken[k], resumed[k]) for k in unbroken)
    assert sorted(d.name for d in ckpt.iterdir()) == ["step-000004", "step-000006"]  # the damaged one rewritten


def test_images_go_to_buckets_and_each_batch_holds_one(bucketed, tmp_path, tiny_model):
    cache = open_latents("openmoji", RESOLUTION, bucketed / "latents")
    assert cache.buckets == {"24x40": 2, "32x32": 5, "40x24": 2}  # 2:3, square, 16:9 (2 of 2:3 and the grey one: square)
    for bucket, group in zip(cache.buckets, cache.groups()):
        width, height = map(int, bucket.split("x"))
        assert group["mean"].shape[2:] == (height // 8, width // 8)  # the test model's VAE: 8x smaller latents
    full = load_file(cache.path)  # what a batch reads from the memory-mapped file: exactly those rows
    batch = cache.rows("32x32", [4, 0, 4])
    assert torch.equal(batch["mean"], full["32x32/mean"][[4, 0, 4]]) and torch.equal(batch["std_flipped"], full["32x32/std_flipped"][[4, 0, 4]])
    assert torch.equal(batch["empty_text_hidden"], full["empty_text_hidden"])
    order = Batches(list(cache.buckets.values()), params.Train(batch_size=2, seed=3))
    assert order.per_epoch == 1 + 2 + 1  # a bucket's last, partial batch is dropped
    for epoch in range(3):
        dealt = order.epoch(epoch)
        assert all(len(rows) == 2 and max(rows) < list(cache.buckets.values())[b] for b, rows in dealt)
        assert dealt == Batches(list(cache.buckets.values()), params.Train(batch_size=2, seed=3)).epoch(epoch)
    assert order.epoch(0) != order.epoch(1) and order.epoch(0) != Batches([2, 5, 2], params.Train(batch_size=2)).epoch(0)


def test_changed_settings_never_resume_old_checkpoints(data, tmp_path, tiny_model):
    train(data, tmp_path, make_params(tiny_model, data / "src"))
    steps_run = []
    train(data, tmp_path, make_params(tiny_model, data / "src", lr=5e-3), lambda s, _: steps_run.append(s))
    assert steps_run == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("text_encoder, kind", [(False, "lora"), (True, "lora"), (False, "dora"), (False, "loha"), (False, "lokr")],
                         ids=["unet", "text-encoder", "dora", "loha", "lokr"])
def test_saved_lora_reproduces_the_trained_model(data, tmp_path, tiny_model, text_encoder, kind):
    p = make_params(tiny_model, data / "src")
    p = p.model_copy(update={"lora": p.lora.model_copy(update={"text_encoder": text_encoder, "type": kind, "conv_rank": 2})})
    trained = train(data, tmp_path, p)["pipe"]
    folder = tmp_path / "a/lora/flat"
    torch.manual_seed(0)
    x, t, ids = torch.randn(2, 4, 4, 4), torch.tensor([10, 700]), trained.tokenizer(["ffstyle, a cat"] * 2).input_ids

    def outputs(pipe):
        with torch.no_grad():
            hidden = pipe.text_encoder(torch.tensor(ids))[0]
            return hidden, pipe.unet(x, t, hidden).sample

    expected = outputs(trained)
    base = outputs(load_pipeline(str(tiny_model)))
    for source in (folder, folder / "flat_kohya.safetensors"):  # diffusers layout, then kohya's
        fresh = load_pipeline(str(tiny_model))
        if kind != "lora" and source.suffix:  # LyCORIS's dora_scale (diffusers drops it), LoHa, LoKr: by the formula
            with torch.no_grad():
                for module, delta in kohya_deltas(source, fresh, {"unet": list(adapter_deltas(trained)["unet"])})["unet"].items():
                    fresh.unet.get_submodule(module).weight += delta.reshape(fresh.unet.get_submodule(module).weight.shape)
        else:
            load_adapter(fresh, folder, "flat")  # diffusers' load_lora_weights, or peft for LoHa / LoKr
        got = outputs(fresh)
        assert torch.allclose(got[1], expected[1], atol=1e-5), source
        assert torch.allclose(got[0], expected[0], atol=1e-5), source
    if kind in ("loha", "lokr"):  # the model card's own lines load it (peft, since diffusers cannot)
        code = (folder / "README.md").read_text().split("```python\n")[1].split("image = ")[0]
        fresh = load_pipeline(str(tiny_model))
        exec(code.replace("models/lora/flat", str(folder)), {"pipe": fresh})
        assert torch.allclose(outputs(fresh)[1], expected[1], atol=1e-5)
    assert (expected[1] - base[1]).abs().max() > 1e-3  # the LoRA changed the model
    assert ((expected[0] - base[0]).abs().max() > 1e-3) == text_encoder
    assert (folder / "validation.png").is_file() and "ffstyle" in (folder / "README.md").read_text()
    assert f"| {kind} |" in (folder / "README.md").read_text()


def test_nan_loss_stops_with_the_step_and_keeps_last_checkpoint(data, tmp_path, tiny_model):
    def poison(step, trainables):
        if step == 2:
            next(iter(trainables.values())).data.fill_(float("nan"))
    with pytest.raises(StyleMixError, match=r"loss is nan at step 3 with mixed_precision = no; set train.mixed_precision: no or lower train.lr"):
        train(data, tmp_path, make_params(tiny_model, data / "src"), poison)
    assert [d.name for d in (tmp_path / "a/ckpt/flat").iterdir()] == ["step-000002"]


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
    ({"batch_size": 100}, {}, r"style flat: 9 images x 1 repeats, fewer than one step's batch .* raise styles.flat.repeats"),
    ({"mixed_precision": "fp16"}, {}, r"fp16 needs a CUDA GPU"),
    ({}, {"targets": ["to_z"]}, r"lora.targets: to_z not in the UNet; its layers include: .*to_q"),
    ({}, {"targets": "single_blocks"}, r"lora.targets: single_blocks names FLUX.1's single-stream blocks, and the base is a UNet"),
])
def test_bad_input_is_one_clear_line(data, tmp_path, tiny_model, train_edits, lora_edits, expected):
    p = make_params(tiny_model, data / "src", **train_edits)
    p = p.model_copy(update={"lora": p.lora.model_copy(update=lora_edits)})
    with pytest.raises(StyleMixError, match=expected):
        train(data, tmp_path, p)


def test_one_bucket_deals_what_a_seeded_permutation_cut_into_batches_does():
    """Without buckets, the order training always had: epoch e's permutation (seed x 100003 + e) of
    every image `repeats` times, cut into batches in order, then shared by step, micro-batch and process."""
    cfg = params.Train(batch_size=3, gradient_accumulation=2, seed=1)
    for world in (1, 2):
        order = [Batches([7], cfg, world, rank, repeats=2) for rank in range(world)]
        assert order[0].per_epoch == 14 // 3 // (2 * world)
        for epoch in range(2):
            cut = (torch.randperm(14, generator=torch.Generator().manual_seed(1 * 100_003 + epoch)) % 7).tolist()
            batches = [cut[i : i + 3] for i in range(0, 12, 3)]
            for within in range(order[0].per_epoch):
                got = [order[rank](epoch * order[0].per_epoch + within, micro) for micro in range(2) for rank in range(world)]
                assert [rows for _, rows in got] == batches[within * 2 * world : (within + 1) * 2 * world]


def test_repeats_show_every_image_that_many_times_an_epoch(data, tmp_path, tiny_model):
    cfg = params.Train(batch_size=3, seed=1)
    for repeats in (1, 2):  # 6 images, batches of 3: an epoch is 2 steps a repeat
        order = Batches([6], cfg, repeats=repeats)
        assert order.per_epoch == 2 * repeats
        epoch = [row for step in range(order.per_epoch) for row in order(step, 0)[1]]
        assert sorted(epoch) == sorted(list(range(6)) * repeats)
    p = make_params(tiny_model, data / "src", max_steps=None, epochs=1)
    p = p.model_copy(update={"styles": {"flat": p.styles["flat"].model_copy(update={"repeats": 2})}})
    assert train(data, tmp_path, p)["steps"] == 9  # 9 images x 2 repeats, batch 2
    assert "| 9 x 2 |" in (tmp_path / "a/lora/flat/README.md").read_text()  # the model card says so


def test_missing_latents(tmp_path, tiny_model):
    with pytest.raises(StyleMixError, match=r"run `dvc repro encode@flat`"):
        train_style("flat", make_params(tiny_model, tmp_path), latents=tmp_path)


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
    raw = {k: v for k, v in p.model_dump().items() if v is not None}  # a null inside a section stays (min_snr_gamma)
    raw.setdefault("validation", {"split": 0})  # the stage reads the section; these latents hold nothing out
    raw.setdefault("prior", {})  # off
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run([*launcher, "-m", "stages.train", style], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_two_cpu_processes_write_a_valid_lora(data, tmp_path, tiny_model):
    log = launch_two_processes(tmp_path, data / "latents", make_params(tiny_model, data / "src"), "flat")
    assert log.count("train flat: 6 of 6 steps") == 1  # one summary, from the main process
    fresh = load_pipeline(str(tiny_model))
    fresh.load_lora_weights(tmp_path / "models/lora/flat")
    assert fresh.unet.peft_config["default_0"].r == 4


def test_training_options_run_together(data, tmp_path, tiny_model):
    options = {"max_steps": 2, "gradient_accumulation": 2, "gradient_checkpointing": True, "scheduler": "linear",
               "warmup_steps": 1, "noise_offset": 0.1, "min_snr_gamma": None, "random_flip": False,
               "channels_last": False, "caption_dropout": 0.5, "validate_every": 1, "batch_size": 1, "quantize_base": "int8"}
    result = train(data, tmp_path, make_params(tiny_model, data / "src", **options))
    assert result["steps"] == 2 and torch.isfinite(torch.tensor(result["final_loss"]))
    assert "Int8" in type(result["pipe"].unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.base_layer.weight).__name__
    images = sorted(q.parent.name for q in (tmp_path / "a/logs/flat").rglob("validation_0.png"))
    assert images == ["step-000001", "step-000002"]


def test_debiased_estimation_weights_each_sample_by_one_over_root_snr():
    """kohya's debiased estimation: the same draw's loss divided by sqrt(SNR(t)). A two-step noise
    schedule makes SNR(t) 9 or 18/7, so each seed's ratio must be one of 1/3 and sqrt(7/18)."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from stylemix.training.loop import diffusion_loss

    scheduler = DDPMScheduler(num_train_timesteps=2, beta_start=0.1, beta_end=0.2, beta_schedule="linear")
    latents = {"mean": torch.randn(1, 4, 8, 8), "std": torch.zeros(1, 4, 8, 8)}
    data = latents | {f"{k}_flipped": v for k, v in latents.items()} | {"text_hidden": torch.zeros(1, 77, 32),
                                                                     "empty_text_hidden": torch.zeros(1, 77, 32)}
    unet = lambda noisy, t, cond, **kw: SimpleNamespace(sample=torch.zeros_like(noisy))  # noqa: E731 loss = mean(noise^2)

    def loss(seed: int, **cfg) -> float:
        train = params.Train(random_flip=False, min_snr_gamma=None, **cfg)
        return float(diffusion_loss(unet, scheduler, data, train, torch.Generator().manual_seed(seed)))

    ratios = {round(loss(seed, debiased_estimation=True) / loss(seed), 5) for seed in range(12)}
    assert ratios == {round(1 / 3, 5), round((7 / 18) ** 0.5, 5)}
