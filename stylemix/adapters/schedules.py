"""Adapter weights while an image is drawn: per block (stylemix.adapters.block_weights) and over the
denoising steps (strength schedules, as loractl and ComfyUI's hooks do it).

A schedule (params.Schedule) multiplies a style's weight at each step: a window {start, end} is 1
from `start` to `end` of the steps (fractions) and 0 outside; (fraction, multiplier) points are
joined linearly and held flat beyond the first and last. diffusers' step callback sets the next
step's weights with `set_adapters`. The text encoder runs once, before the first step, so a LoRA
on it takes the schedule's first value. A schedule changes the weights while drawing: it cannot
be baked into a merged file.
"""
from collections.abc import Callable

import numpy as np
from peft.tuners.lora import LoraLayer
from peft.tuners.lycoris_utils import LycorisLayer
from pydantic import TypeAdapter

from stylemix import params
from stylemix.adapters import block_weights
from stylemix.families import denoiser


def factor(schedule: params.Schedule | None, fraction: float) -> float:
    """The schedule's multiplier at `fraction` of the denoising steps (0 = the first step)."""
    if schedule is None:
        return 1.0
    if isinstance(schedule, params.Window):
        return float(schedule.start <= fraction < schedule.end)
    xs, ys = zip(*schedule)
    return float(np.interp(fraction, xs, ys))


def dump(schedules: dict[str, params.Schedule]) -> dict:
    """Schedules by name as JSON (a merged file's metadata, a PNG's recipe); `load` reads it back."""
    return {name: s.model_dump() if isinstance(s, params.Window) else [list(point) for point in s] for name, s in schedules.items()}


def load(raw: dict) -> dict[str, params.Schedule]:
    return TypeAdapter(dict[str, params.Schedule]).validate_python(raw)


class Mix:
    """Named adapters at weights, each with optional block multipliers and a schedule."""

    def __init__(self, weights: dict[str, float], blocks: dict[str, dict[str, float]] | None = None,
                 schedules: dict[str, params.Schedule] | None = None):
        self.weights, self.blocks, self.schedules = weights, blocks or {}, schedules or {}

    def scaled(self, strength: float) -> "Mix":
        """The same mix with every weight times `strength`."""
        return Mix({n: w * strength for n, w in self.weights.items()}, self.blocks, self.schedules)

    def scales(self, pipe, fraction: float = 0.0) -> list:
        """What `pipe.set_adapters` takes for every adapter at `fraction` of the steps."""
        components = [c for c in pipe._lora_loadable_modules if getattr(pipe, c, None) is not None]
        out = []
        for name, weight in self.weights.items():
            weight *= factor(self.schedules.get(name), fraction)
            mults = self.blocks.get(name)
            out.append(block_weights.diffusers_scales(weight, mults, components) if mults else weight)
        return out

    def set(self, pipe, fraction: float = 0.0) -> None:
        """Set every adapter's weights at `fraction` of the steps."""
        pipe.set_adapters(list(self.weights), self.scales(pipe, fraction))
        # diffusers gives a block-weighted adapter's layers outside the attention blocks (LoCon's
        # ResNet convolutions) a same-numbered attention's weight, or 1; they keep the style's
        # weight, as block_weights says and merges bake it.
        for name, mults in self.blocks.items():
            weight = self.weights[name] * factor(self.schedules.get(name), fraction)
            for module_name, module in denoiser(pipe).named_modules():
                if isinstance(module, (LoraLayer, LycorisLayer)) and not block_weights.in_attention(mults, module_name):
                    module.set_scale(name, weight)

    def apply(self, pipe, on_step_end: Callable | None = None) -> Callable | None:
        """Set the adapters for the first step; returns the step callback that sets each next step's
        (chained before `on_step_end`), or `on_step_end` itself when nothing is scheduled."""
        self.set(pipe)
        if not self.schedules:
            return on_step_end

        def callback(pipe_, step, timestep, kwargs):
            steps = len(pipe_.scheduler.timesteps)  # the sampler's own count (PNDM takes one more than asked)
            if step + 1 < steps:
                self.set(pipe_, (step + 1) / steps)
            return on_step_end(pipe_, step, timestep, kwargs) if on_step_end else kwargs
        return callback
