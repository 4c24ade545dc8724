"""The mixing lab (explore@P): a pair of styles over a plane of weights, drawn and scored.

Every point of a pair's plane (each weight of the first style with each weight of the second, for
each method) draws the same prompts and seeds on one loaded pipeline (stylemix.drawing.drawer): `linear`
by switching the styles' adapters (set_adapters, the model merge@C's linear file is), any other
method by merging the point (stylemix.mixing.merging) into a scratch folder and loading that. A point's
prompts carry the trigger words of the styles it draws, as a person would type them (the base's
none, so the plane's edges are the report's own pictures of each style); the bleed prompts none.

Scores per point (stylemix.evaluation.scoring's embeddings): similarity to each style, CLIP score to the prompt
(content kept), and bleed: how far the mix moves an untriggered picture from the base's (1 - the
cosine of their embeddings, mean over the bleed prompts). The (0, 0) point is the base for every
method, and a point with one weight 0 that style alone (nothing to merge); each style alone at
weight 1 (linear) anchors its share: the part of that style's gain over the base a point keeps. The
best point is a mix (both weights non-zero) that keeps the content floor and some of both styles,
with the largest smaller share.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from stylemix import params
from stylemix.drawing.drawer import Drawer
from stylemix.evaluation.scoring import embed_images, embed_texts
from stylemix.mixing.merging import merge_combo
from stylemix.progress import progress

Point = tuple[str, float, float]  # (method, weight of the first style, weight of the second)
BASE: Point = ("base", 0.0, 0.0)


def plane(pair: params.ExplorePair) -> list[Point]:
    return [(m, wa, wb) for m in pair.methods for wa in pair.weights for wb in pair.weights]


def drawn_as(point: Point) -> Point:
    """The model a point is: the base at (0, 0), one style alone where the other's weight is 0."""
    method, wa, wb = point
    return BASE if wa == wb == 0 else ("linear", wa, wb) if wa == 0 or wb == 0 else point


def to_draw(pair: params.ExplorePair) -> list[Point]:
    """The base, each style alone at 1 (the shares' anchors), then the plane; each model once."""
    return list(dict.fromkeys([BASE, ("linear", 1.0, 0.0), ("linear", 0.0, 1.0), *map(drawn_as, plane(pair))]))


@dataclass
class Drawn:
    point: Point
    kind: str  # "style" (the triggers of the styles drawn) or "bleed" (none)
    prompt: str
    seed: int
    image: Image.Image


def draw_plane(drawer: Drawer, name: str, pair: params.ExplorePair, cfg: params.Explore, gen: params.Generate,
               scratch: Path) -> list[Drawn]:
    """Every prompt x seed at every point to draw; merged points are written under `scratch`
    (one of the drawer's roots) and dropped after their images."""
    a, b = pair.styles
    points = to_draw(pair)
    out = []
    with progress(unit="images") as bar:
        task = bar.add_task(f"explore {name}", total=len(points) * (len(cfg.prompts) + len(cfg.bleed_prompts)) * len(cfg.seeds))
        for i, point in enumerate(points):
            method, wa, wb = point
            combo = pair.combo("linear" if method == "base" else method, {a: wa, b: wb})
            if combo.method == "linear":
                weights, blocks, schedule = combo.weights, combo.blocks, combo.schedule
            else:
                merged = f"{name}_{i}"
                drawer.make_room_for_lora()  # the merge's load check puts a LoRA on this pipeline
                merge_combo(merged, combo, out=scratch, check_with=drawer.pipe)
                weights, blocks, schedule = {merged: 1.0}, None, None
            for kind, prompts in (("style", cfg.prompts), ("bleed", cfg.bleed_prompts)):
                each = [(prompt, seed) for prompt in prompts for seed in cfg.seeds]
                drawn = drawer.draw_batch([p for p, _ in each], weights, [s for _, s in each], gen, blocks=blocks,
                                          schedules=schedule, triggers=None if kind == "style" else [])
                out += [Drawn(point, kind, prompt, seed, image) for (prompt, seed), (image, _) in zip(each, drawn)]
                bar.advance(task, len(each))
            if combo.method != "linear":
                drawer.forget(merged)
    return out


def image_scores(scorer, drawn: list[Drawn], refs: torch.Tensor, styles: list[str]) -> pd.DataFrame:
    """One row per image: its point, kind, CLIP score, similarity to each style and (bleed prompts)
    its bleed against the base's picture of the same prompt and seed."""
    emb = embed_images(scorer, [d.image for d in drawn])
    prompts = sorted({d.prompt for d in drawn})
    text = dict(zip(prompts, embed_texts(scorer, prompts)))
    sims = emb @ refs.T
    base = {(d.prompt, d.seed): emb[i] for i, d in enumerate(drawn) if d.point == BASE and d.kind == "bleed"}
    rows = []
    for i, d in enumerate(drawn):
        bleed = 1 - float(emb[i] @ base[d.prompt, d.seed]) if d.kind == "bleed" else math.nan
        rows.append({"method": d.point[0], "wa": d.point[1], "wb": d.point[2], "kind": d.kind, "prompt": d.prompt, "seed": d.seed,
                     "clip_score": float(emb[i] @ text[d.prompt]), "bleed": bleed}
                    | {f"sim_{s}": float(sims[i, j]) for j, s in enumerate(styles)})
    return pd.DataFrame(rows)


def pareto(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points no other point beats on both x and y (and ties on neither)."""
    dominated = (x[None] >= x[:, None]) & (y[None] >= y[:, None]) & ((x[None] > x[:, None]) | (y[None] > y[:, None]))
    return ~dominated.any(axis=1)


def point_table(images: pd.DataFrame, pair: params.ExplorePair, content_kept: float) -> tuple[pd.DataFrame, dict]:
    """The plane's points with their scores, shares and standing; and the DVC metrics of the pair."""
    a, b = pair.styles
    point = ["method", "wa", "wb"]
    style = images[images["kind"] == "style"].groupby(point)[["clip_score", f"sim_{a}", f"sim_{b}"]].mean()
    bleed = images[images["kind"] == "bleed"].groupby(point)["bleed"].mean()
    base = style.loc[BASE]
    alone = {a: style.loc[("linear", 1.0, 0.0)], b: style.loc[("linear", 0.0, 1.0)]}
    gain = {s: alone[s][f"sim_{s}"] - base[f"sim_{s}"] for s in (a, b)}
    rows = []
    for method, wa, wb in plane(pair):
        model = drawn_as((method, wa, wb))
        row = {"method": method, f"w_{a}": wa, f"w_{b}": wb} | style.loc[model].to_dict() | {"bleed": float(bleed.loc[model])}
        for s in (a, b):  # NaN where the style alone is no nearer its style than the base: nothing to keep
            row[f"share_{s}"] = (row[f"sim_{s}"] - base[f"sim_{s}"]) / gain[s] if gain[s] > 0 else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    floor = content_kept * float(base["clip_score"])
    table["kept"] = table["clip_score"] >= floor
    table["pareto"] = False
    kept = table.index[table["kept"]]
    table.loc[kept, "pareto"] = pareto(table.loc[kept, f"sim_{a}"].to_numpy(), table.loc[kept, f"sim_{b}"].to_numpy())
    balance = table[[f"share_{a}", f"share_{b}"]].min(axis=1, skipna=False)
    mix = (table[f"w_{a}"] != 0) & (table[f"w_{b}"] != 0)
    balance = balance.where(mix & table["kept"] & (balance > 0))  # something of both styles, the content kept
    best = None if balance.isna().all() else int(balance.idxmax())
    table["best"] = table.index == best
    metrics = {
        "styles": [a, b], "points": len(table), "content_floor": floor, "kept": int(table["kept"].sum()),
        "pareto": int(table["pareto"].sum()),
        "base": {"clip_score": float(base["clip_score"]), f"sim_{a}": float(base[f"sim_{a}"]), f"sim_{b}": float(base[f"sim_{b}"])},
        "alone": {s: {"clip_score": float(alone[s]["clip_score"]), f"sim_{s}": float(alone[s][f"sim_{s}"]),
                      "gain_over_base": float(gain[s])} for s in (a, b)},
        "not_learned": [s for s in (a, b) if gain[s] <= 0],
        "best": None if best is None else {
            "method": table.at[best, "method"], "weights": {a: float(table.at[best, f"w_{a}"]), b: float(table.at[best, f"w_{b}"])}}
        | {k: float(table.at[best, k]) for k in ("clip_score", "bleed", f"sim_{a}", f"sim_{b}", f"share_{a}", f"share_{b}")},
    }
    return table, metrics
