"""Strength schedules: the adapter weights really change from one denoising step to the next."""
import pytest
import torch

from stylemix import params
from stylemix.adapters.schedules import Mix, factor
from stylemix.drawing.render import SCHEDULERS
from stylemix.models.base_model import load_pipeline
from tests.test_merge import random_lora


def test_schedule_factors():
    window = params.Window(start=0.25, end=0.5)
    assert [factor(window, f) for f in (0, 0.25, 0.4, 0.5, 0.9)] == [0, 1, 1, 0, 0]
    points = [(0.2, 1.0), (0.6, 0.0)]
    assert [factor(points, f) for f in (0, 0.2, 0.4, 0.6, 1)] == pytest.approx([1, 1, 0.5, 0, 0])
    assert factor(None, 0.7) == 1


@pytest.mark.parametrize("schedule, expected", [(params.Window(start=0, end=0.5), [1, 1, 0, 0]),
                                                ([(0, 1), (1, 0)], [1, 0.75, 0.5, 0.25])])
def test_a_schedule_sets_the_weights_of_every_step(tmp_path, tiny_model, schedule, expected):
    (tmp_path / "ink").mkdir()
    random_lora(tiny_model, tmp_path / "ink", rank=4, alpha=2, text_encoder=True, seed=1)
    pipe = load_pipeline(str(tiny_model))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(tmp_path / "ink", adapter_name="ink")
    seen = {"unet": [], "text_encoder": []}
    unet_layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q
    text_layer = pipe.text_encoder.get_submodule("encoder.layers.0.self_attn.q_proj")
    unet_layer.register_forward_pre_hook(lambda m, _: seen["unet"].append(m.scaling["ink"]))
    text_layer.register_forward_pre_hook(lambda m, _: seen["text_encoder"].append(m.scaling["ink"]))
    pipe.scheduler = SCHEDULERS["dpmsolver++"](pipe.scheduler.config)
    callback = Mix({"ink": 0.8}, schedules={"ink": schedule}).apply(pipe)
    pipe("a cat", num_inference_steps=4, height=32, width=32, callback_on_step_end=callback,
         generator=torch.Generator().manual_seed(0))
    lora_scale = 0.8 * 2 / 4  # weight x alpha / rank
    assert seen["unet"] == pytest.approx([lora_scale * e for e in expected])  # one UNet call per step (CFG batched)
    assert seen["text_encoder"], "the text encoder's LoRA never ran"
    assert seen["text_encoder"] == pytest.approx([lora_scale * expected[0]] * len(seen["text_encoder"]))  # once, before step 0
