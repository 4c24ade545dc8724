"""The X/Y plot: one setting along each axis, every cell drawn and scored.

Axes are `seed`, `prompt` or `weight:<style or combination>`; their values are written as in
A1111's X/Y plot: a list `0, 0.5, 1`, a range with a count `0-1 [5]` (ends included), or a range
with a step `0-1 (+0.25)`; prompts are a comma-separated list, quoted where a prompt has a comma.
"""
import csv
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from stylemix.errors import StyleMixError
from stylemix.images import grid

NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
COUNT = re.compile(f"^{NUMBER}-{NUMBER}\\[\\s*(\\d+)\\s*\\]\\s*$")
STEP = re.compile(f"^{NUMBER}-{NUMBER}\\(\\s*\\+?{NUMBER}\\)\\s*$")
MAX_CELLS = 64  # one axis times the other; a bigger plot is a sweep's job (`stylemix sweep`)


@dataclass
class Axis:
    kind: str  # "seed", "prompt", "weight:<name>", or "" for none
    values: list

    def label(self, value) -> str:
        if self.kind.startswith("weight:"):
            return f"{self.kind.removeprefix('weight:')}={value:g}"
        return f"seed {value}" if self.kind == "seed" else str(value)


def parse_values(kind: str, text: str) -> list:
    """An axis's values from A1111's syntax; a one-line error for anything else."""
    if not kind:
        return [None]
    if kind == "prompt":
        values = [v.strip() for v in next(csv.reader([text], skipinitialspace=True), []) if v.strip()]
    elif m := COUNT.match(text):
        low, high, count = float(m[1]), float(m[2]), int(m[3])
        values = list(np.linspace(low, high, count)) if count > 1 else [low]
    elif m := STEP.match(text):
        low, high, step = float(m[1]), float(m[2]), float(m[3])
        if step <= 0:
            raise StyleMixError(f"{kind} axis {text!r}: the step must be positive, e.g. 0-1 (+0.25)")
        values = list(np.arange(low, high + step / 2, step))
    else:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise StyleMixError(f"{kind} axis {text!r}: write numbers as 0, 0.5, 1 or a range 0-1 [5] or 0-1 (+0.25)") from None
    if not values:
        raise StyleMixError(f"{kind} axis: no values; e.g. 0, 0.5, 1")
    if kind == "seed":
        if any(v != int(v) for v in values):
            raise StyleMixError(f"seed axis {text!r}: seeds are whole numbers")
        return [int(v) for v in values]
    return [v if kind == "prompt" else round(float(v), 6) for v in values]


def cells(x: Axis, y: Axis) -> list[tuple[int, int, dict]]:
    """(row, column, settings) for every cell; settings hold `seed`, `prompt` and `weights` changes."""
    if len(x.values) * len(y.values) > MAX_CELLS:
        raise StyleMixError(f"{len(x.values)} x {len(y.values)} cells: at most {MAX_CELLS}; use fewer values")
    out = []
    for r, yv in enumerate(y.values):
        for c, xv in enumerate(x.values):
            change: dict = {"weights": {}}
            for axis, value in ((x, xv), (y, yv)):
                if axis.kind.startswith("weight:"):
                    change["weights"][axis.kind.removeprefix("weight:")] = value
                elif axis.kind:
                    change[axis.kind] = value
            out.append((r, c, change))
    return out


def plot(x: Axis, y: Axis, images: list[Image.Image], scores: list[float], title: str) -> Image.Image:
    """The labelled grid, each cell's CLIP score under it."""
    cols = len(x.values)
    rows = [(y.label(v) if y.kind else "", images[r * cols:(r + 1) * cols]) for r, v in enumerate(y.values)]
    notes = [[f"CLIP {s:.3f}" for s in scores[r * cols:(r + 1) * cols]] for r in range(len(y.values))]
    return grid(rows, [x.label(v) if x.kind else "" for v in x.values], title, tile=144, notes=notes)
