"""explore@P: the mixing lab for one pair of styles (stylemix.mixing.exploring). Every point of the pair's
weight plane drawn and scored into reports/explore/<pair>/: points.csv (one row per point),
metrics.json (the best point, the base and each style alone: DVC metrics), and plots/: a heatmap per
score over the plane, the Pareto front of the two style similarities, and image grids over the plane."""
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

from stylemix import params
from stylemix.drawing.drawer import Drawer
from stylemix.errors import StyleMixError, run_stage
from stylemix.evaluation.plots import heatmaps
from stylemix.evaluation.scoring import load_scorer, style_reference
from stylemix.images import grid
from stylemix.mixing.exploring import draw_plane, drawn_as, image_scores, point_table
from stylemix.outputs import atomic_dir, atomic_write, write_json
from stylemix.paths import EXPLORE, FILTERED, LORAS

MARKERS = {"linear": "o", "svd": "s", "ties": "^", "dare_linear": "v", "dare_ties": "D"}


def pareto_plot(table: pd.DataFrame, metrics: dict, path: Path) -> None:
    """Every point by its similarity to each style, coloured by CLIP score; below the content floor
    grey crosses; the front joined; the base and the best point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = metrics["styles"]
    x, y = f"sim_{a}", f"sim_{b}"
    fig, ax = plt.subplots(figsize=(6.4, 5))
    lost = table[~table["kept"]]
    ax.scatter(lost[x], lost[y], marker="x", color="#aaa", label=f"CLIP score < {metrics['content_floor']:.3g}: content lost")
    kept = table[table["kept"]]
    colours = None
    for method, group in kept.groupby("method"):
        colours = ax.scatter(group[x], group[y], c=group["clip_score"], cmap="viridis", vmin=table["clip_score"].min(),
                             vmax=table["clip_score"].max(), marker=MARKERS[method], edgecolor="black", linewidth=0.4,
                             label=method)
    front = table[table["pareto"]].sort_values(x)
    ax.plot(front[x], front[y], "-", color="C3", linewidth=1, label="Pareto front (content kept)")
    for _, row in table.iterrows():
        ax.annotate(f"{row[f'w_{a}']:g}/{row[f'w_{b}']:g}", (row[x], row[y]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.scatter([metrics["base"][x]], [metrics["base"][y]], marker="P", s=80, color="black", label="base", zorder=3)
    if best := metrics["best"]:
        ax.scatter([best[x]], [best[y]], marker="*", s=260, color="gold", edgecolor="black", zorder=4,
                   label=f"best: {a} {best['weights'][a]:g}, {b} {best['weights'][b]:g} ({best['method']})")
    if colours is not None:
        fig.colorbar(colours, ax=ax, label="CLIP score (content)")
    ax.set_xlabel(f"similarity to {a}")
    ax.set_ylabel(f"similarity to {b}")
    ax.set_title(f"{a} x {b}: each point labelled weight of {a} / weight of {b}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plane_grid(drawn, table: pd.DataFrame, pair: params.ExplorePair, method: str, kind: str, prompt: str, seed: int):
    """One prompt and seed at every point of a method's plane: rows the first style's weights,
    columns the second's, under each image its point's scores (means over every prompt and seed)."""
    a, b = pair.styles
    images = {(d.point, d.kind, d.prompt, d.seed): d.image for d in drawn}
    rows, notes = [], []
    for wa in pair.weights:
        rows.append((f"{a} {wa:g}", [images[drawn_as((method, wa, wb)), kind, prompt, seed] for wb in pair.weights]))
        cells = table[(table["method"] == method) & (table[f"w_{a}"] == wa)].set_index(f"w_{b}").loc[pair.weights]
        notes.append([f"bleed {r.bleed:.2f}" if kind == "bleed" else f"{r[f'sim_{a}']:+.2f} {r[f'sim_{b}']:+.2f} c{r.clip_score:.2f}"
                      for _, r in cells.iterrows()])
    what = "no trigger; under each: its point's bleed" if kind == "bleed" else f"under each: its point's sim to {a} / {b}, CLIP"
    return grid(rows, [f"{b} {wb:g}" for wb in pair.weights], f"{method}: {prompt!r}, seed {seed}; {what}", notes=notes)


def main() -> None:
    if len(sys.argv) != 2:
        raise StyleMixError("usage: python -m stages.explore PAIR")
    name = sys.argv[1]
    p = params.load("base", "merge", "generate", "score")
    cfg = p.merge.explore
    if name not in cfg.pairs:
        raise StyleMixError(f"unknown pair {name!r}; merge.explore.pairs are: {', '.join(cfg.pairs) or 'none'}")
    pair = cfg.pairs[name]
    for style in pair.styles:
        if not (LORAS / style).is_dir():
            raise StyleMixError(f"{LORAS / style} missing: run `dvc repro train@{style}` first")
    scorer = load_scorer(p.score)
    refs = torch.stack([style_reference(scorer, FILTERED / s) for s in pair.styles])
    with tempfile.TemporaryDirectory() as scratch:  # the merged points of methods other than linear
        drawer = Drawer(p.base, roots=(LORAS, Path(scratch)))
        drawn = draw_plane(drawer, name, pair, cfg, p.generate, Path(scratch))
    table, metrics = point_table(image_scores(scorer, drawn, refs, pair.styles), pair, cfg.content_kept)
    a, b = pair.styles
    out = EXPLORE / name
    with atomic_dir(out / "plots") as tmp:
        scores = {f"sim_{a}": f"similarity to {a}", f"sim_{b}": f"similarity to {b}", "clip_score": "CLIP score (content)",
                  "bleed": "bleed (untriggered prompts vs the base)"}
        panels = [(f"{method}: {title}", table[table["method"] == method].pivot(index=f"w_{a}", columns=f"w_{b}", values=key))
                  for method in pair.methods for key, title in scores.items()]
        heatmaps(panels, f"weight of {a}", f"weight of {b}", tmp / "heatmaps.png")
        pareto_plot(table, metrics, tmp / "pareto.png")
        for method in pair.methods:
            plane_grid(drawn, table, pair, method, "style", cfg.prompts[0], cfg.seeds[0]).save(tmp / f"grid_{method}.png")
            plane_grid(drawn, table, pair, method, "bleed", cfg.bleed_prompts[0], cfg.seeds[0]).save(tmp / f"bleed_{method}.png")
    atomic_write(out / "points.csv", table.to_csv(index=False))
    write_json(out / "metrics.json", metrics)
    best, lost = metrics["best"], metrics["not_learned"]
    why = f"{', '.join(lost)} learned nothing" if lost else "no mix keeps the content and some of both styles"
    verdict = (f"best {best['method']} {a}={best['weights'][a]:g} {b}={best['weights'][b]:g} keeps "
               f"{best[f'share_{a}']:.0%} / {best[f'share_{b}']:.0%} of their styles" if best else f"no best mix ({why})")
    print(f"explore {name}: {len(table)} points, {len(drawn)} images, {metrics['pareto']} on the Pareto front; {verdict} "
          f"-> {out}/")


if __name__ == "__main__":
    run_stage(main)
