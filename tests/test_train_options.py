"""The training options beyond the defaults: timestep sampling, the optimizers of pytorch-optimizer,
an EMA of the LoRA weights, zero-terminal-SNR v-models; each runs, resumes bit-exactly and refuses a
bad value in one line."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from stylemix import params
from stylemix.drawing.render import SCHEDULERS, render
from stylemix.errors import StyleMixError
from stylemix.models.base_model import load_pipeline
from stylemix.training.loop import make_optimizer, sample_timesteps
from tests.test_train import data, killed_after, make_params, train, weights  # noqa: F401 (data: the fixture)

DRAWS = 40_000


def share(cfg: dict, begin: int, end: int, total: int = 1000) -> float:
    t = sample_timesteps(params.Timesteps(**cfg), total, DRAWS, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < total
    return float(((t >= begin) & (t < end)).float().mean())


@pytest.mark.parametrize(("cfg", "begin", "end", "expected"), [
    ({"sampling": "later", "multiplier": 3, "portion": 0.25}, 750, 1000, 0.5),  # 0.25 x 3 / (0.75 + 0.25 x 3)
    ({"sampling": "earlier", "multiplier": 3, "portion": 0.25}, 0, 250, 0.5),
    ({"sampling": "range", "multiplier": 4, "range": [200, 400]}, 200, 400, 0.5),  # 0.2 x 4 / (0.8 + 0.2 x 4)
    ({"sampling": "logit_normal"}, 250, 750, math.erf(math.log(3) / math.sqrt(2))),  # |N(0, 1)| < logit(0.75)
    ({"sampling": "uniform"}, 750, 1000, 0.25),
], ids=["later", "earlier", "range", "logit_normal", "uniform"])
def test_each_sampling_draws_its_share_of_timesteps(cfg, begin, end, expected):
    assert abs(share(cfg, begin, end) - expected) < 0.01


def test_uniform_sampling_draws_what_training_always_drew():
    """The default leaves every earlier run's numbers as they were: the same torch.randint draw."""
    got = sample_timesteps(params.Timesteps(), 1000, 8, torch.Generator().manual_seed(3))
    assert torch.equal(got, torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize(("train", "expected"), [
    ({"timesteps": {"sampling": "range", "range": [800, 200]}}, r"train.timesteps: range \[800, 200\]: begin must be below end"),
    ({"timesteps": {"sampling": "later", "multiplier": 0}}, r"train.timesteps.multiplier = 0: Input should be greater than 0"),
    ({"optimizer": "schedule_free_adamw"}, r"schedule_free_adamw replaces the lr schedule \(cosine\): set train.scheduler: constant"),
    ({"optimizer": "sophia"}, r"train.optimizer = 'sophia': Input should be 'adamw', 'adamw8bit', 'prodigy'"),
    ({"ema": {"enabled": True, "decay": 1.5}}, r"train.ema.decay = 1.5: Input should be less than 1"),
])
def test_bad_values_are_one_line_naming_the_key(train, expected):
    with pytest.raises(StyleMixError, match=expected):
        params.validate({"train": {"scheduler": "cosine"} | train})


def test_unknown_optimizer_args_are_refused_not_swallowed():
    """pytorch-optimizer's classes take **kwargs and would ignore a misspelt argument."""
    cfg = params.Train(optimizer="prodigy", lr=1.0, optimizer_args={"d_coeff": 2.0})
    with pytest.raises(StyleMixError, match=r"train.optimizer_args: prodigy takes no d_coeff; it takes lr, betas, .*d_coef"):
        make_optimizer({"unet.x": torch.nn.Parameter(torch.zeros(2))}, cfg, torch.device("cpu"))


def test_a_style_overrides_a_sub_section_key_by_key():
    p = params.validate({"styles": {"a": {"source": "x", "trigger": "t", "train": {"timesteps": {"multiplier": 5}}}},
                         "train": {"timesteps": {"sampling": "later", "portion": 0.5}}})
    assert params.train_for(p, "a").timesteps == params.Timesteps(sampling="later", portion=0.5, multiplier=5)
    bad = params.validate({"styles": {"a": {"source": "x", "trigger": "t", "train": {"optimizer": "schedule_free_adamw"}}},
                           "train": {"scheduler": "cosine"}})
    with pytest.raises(StyleMixError, match=r"styles.a.train: .*set train.scheduler: constant"):
        params.train_for(bad, "a")


@pytest.mark.parametrize(("optimizer", "lr"), [
    ("prodigy", 1.0), ("lion", 1e-3), ("adafactor", 1e-2), ("came", 1e-2), ("schedule_free_adamw", 1e-2)])
def test_each_optimizer_trains_the_lora(data, tmp_path, tiny_model, optimizer, lr):  # noqa: F811
    """Every optimizer moves the LoRA's up-projections (zero at the start) to finite values. The
    schedule-free one trains an interpolation and saves its average: the returned (saved) weights are
    not the last step's."""
    steps = {}
    p = make_params(tiny_model, data / "src", optimizer=optimizer, lr=lr, scheduler="constant")
    result = train(data, tmp_path, p, lambda step, t: steps.__setitem__(step, {k: v.detach().clone() for k, v in t.items()}))
    saved = weights(result)
    ups = [v for k, v in saved.items() if "lora_B" in k]
    # At least a tenth of lr a step (an Adafactor whose lr was scaled by the zero weights' RMS moved
    # a hundredth of that); Prodigy starts from a step size of d0 = 1e-6 and grows it.
    floor = 0 if optimizer == "prodigy" else 0.1 * lr * len(steps)
    assert ups and all(torch.isfinite(v).all() for v in saved.values()) and max(v.abs().max() for v in ups) > floor
    last = steps[max(steps)]
    differ = any(not torch.equal(saved[k], last[k]) for k in saved)
    assert differ == (optimizer == "schedule_free_adamw")
    assert f"Optimizer {optimizer}" in (tmp_path / "a/lora/flat/README.md").read_text()


def test_ema_is_saved_and_follows_diffusers_warmup(data, tmp_path, tiny_model):  # noqa: F811
    """The saved LoRA is the average of the weights after each step, with diffusers' warm-up decay
    min(decay, 1 - (1 + k)^-power) at the k-th update (so the first update copies the weights)."""
    ema = {"enabled": True, "decay": 0.8, "power": 0.5}
    steps = {}
    p = make_params(tiny_model, data / "src", ema=ema)
    saved = weights(train(data, tmp_path, p, lambda step, t: steps.__setitem__(step, {k: v.detach().clone() for k, v in t.items()})))
    average = None
    for k, step in enumerate(sorted(steps)):
        decay = min(0.8, 1 - (1 + k) ** -0.5)
        average = {n: w.clone() for n, w in steps[step].items()} if average is None else \
            {n: average[n] - (1 - decay) * (average[n] - w) for n, w in steps[step].items()}
    assert all(torch.allclose(saved[n], average[n], atol=1e-6) for n in saved)
    assert any(not torch.equal(saved[n], steps[max(steps)][n]) for n in saved)
    assert "an exponential moving average of the trained weights (decay 0.8" in (tmp_path / "a/lora/flat/README.md").read_text()


@pytest.mark.parametrize("options", [
    {"ema": {"enabled": True, "decay": 0.9}, "timesteps": {"sampling": "logit_normal"}, "masked_loss": {"enabled": True}},
    {"optimizer": "schedule_free_adamw", "scheduler": "constant", "warmup_steps": 2, "timesteps": {"sampling": "later"}},
    {"optimizer": "prodigy", "lr": 1.0, "timesteps": {"sampling": "range", "range": [100, 600]}},
], ids=["ema-masked", "schedule-free", "prodigy"])
def test_resume_with_the_options_is_bit_exact(data, tmp_path, tiny_model, options):  # noqa: F811
    """Killed after step 3 (its last checkpoint: step 2), the rerun restores the EMA, the optimizer's
    own state (Prodigy's step size, schedule-free's average) and ends on the unbroken run's weights."""
    p = make_params(tiny_model, data / "src", **options)
    unbroken = weights(train(data, tmp_path, p, run="a"))
    killed_after(data, tmp_path, p, 3, "b")
    resumed = weights(train(data, tmp_path, p, run="b"))
    assert all(torch.equal(unbroken[k], resumed[k]) for k in unbroken)


def test_zero_terminal_snr_is_refused_on_an_epsilon_model(tiny_model):
    with pytest.raises(StyleMixError, match=r"base.zero_terminal_snr needs a v-prediction model and .* predicts epsilon"):
        load_pipeline(params.Base(model=str(tiny_model), zero_terminal_snr=True))


def test_zero_terminal_snr_trains_and_draws_a_v_model(data, tmp_path, tiny_model):  # noqa: F811
    """On a v-model, training's noise schedule reaches pure noise (alpha-bar 0 at the last step),
    every drawing scheduler starts there (trailing spacing), and training and drawing with guidance
    rescale give finite results."""
    base = params.Base(model=str(tiny_model), resolution=32, prediction_type="v_prediction", zero_terminal_snr=True)
    pipe = load_pipeline(base)
    assert DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod[-1] == 0
    assert load_pipeline(base.model_copy(update={"zero_terminal_snr": False})).scheduler.alphas_cumprod[-1] > 0
    for name, make in SCHEDULERS.items():
        scheduler = make(pipe.scheduler.config)
        scheduler.set_timesteps(10)
        assert scheduler.config.rescale_betas_zero_snr and scheduler.timesteps[0] == 999, name
    p = make_params(tiny_model, data / "src", max_steps=2)
    p = p.model_copy(update={"base": p.base.model_copy(update={"prediction_type": "v_prediction", "zero_terminal_snr": True})})
    assert math.isfinite(train(data, tmp_path, p)["final_loss"])
    cfg = params.Generate(steps=4, guidance_rescale=0.7)
    image, _ = render(pipe, ["a cat"], [0], cfg, base, "base", ["a cat"])[0]
    assert np.isfinite(np.asarray(image, dtype=float)).all() and np.asarray(image).std() > 0
