"""score: CLIP score and style similarity of every generated image, per model, and where a generated
prompt is a held-out subject of the truth folder, the ground truth's style accuracy, subject accuracy
and nearness (stylemix.evaluation.ground_truth), into DVC metrics, with a bar chart per metric and the model x
look matrix."""
from pathlib import Path

import numpy as np
import pandas as pd

from stylemix import params
from stylemix.errors import run_stage
from stylemix.evaluation import ground_truth
from stylemix.evaluation.plots import heatmaps
from stylemix.evaluation.scoring import load_scorer, score_images, summarize
from stylemix.outputs import atomic_dir, atomic_write, write_json
from stylemix.paths import REPORTS, SCORE_PLOTS, TRUTH


def bar_chart(metrics: dict, key: str, path: Path, style: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics["models"])
    stats = [metrics["models"][m][key] if style is None else metrics["models"][m][key][style] for m in names]
    means = np.array([s["mean"] for s in stats])
    errors = np.array([[s["mean"] - s["ci_low"] for s in stats], [s["ci_high"] - s["mean"] for s in stats]])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(names), 3.2))
    ax.bar(names, means, yerr=errors, capsize=4, color=["#999"] + ["#4c72b0"] * (len(names) - 1))
    title = key.replace("_", " ") + (f" to {style}" if style else "")
    if metrics["scorer"].get("about"):
        title += " (demo scorer: knows the demo data only)"
    elif not metrics["scorer"]["scorer_pretrained"]:
        title += " (untrained scorer: not meaningful)"
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = params.load("score", "styles", "merge")
    styles = list(p.styles)
    models = ["base", *styles, *p.merge.combos]
    scorer = load_scorer(p.score)
    scores, embeddings = score_images(scorer, models, styles)
    metrics = summarize(scores, styles, p.score)
    judged = None
    if truth := ground_truth.load_truth(TRUTH):
        judged = ground_truth.judge(scores, embeddings, truth, scorer)
        if not judged.empty:
            metrics["ground_truth"] = ground_truth.summarize(judged, truth)
            scores = scores.join(judged.drop(columns=scores.columns))
    write_json(REPORTS / "metrics.json", metrics)
    atomic_write(REPORTS / "scores.csv", scores.to_csv(index=False))
    with atomic_dir(SCORE_PLOTS) as tmp:
        bar_chart(metrics, "clip_score", tmp / "clip_score.png")
        for style in styles:
            bar_chart(metrics, "style_similarity", tmp / f"style_similarity_{style}.png", style)
        if "ground_truth" in metrics:
            matrix = pd.DataFrame(metrics["ground_truth"]["style_accuracy"]).T[metrics["ground_truth"]["looks"]]
            heatmaps([("style accuracy: each model's pictures of held-out subjects\nby the look they are nearest", matrix)],
                     "model", "look", tmp / "style_accuracy.png")
    told = f", {len(judged)} of held-out subjects judged by the ground truth" if judged is not None and len(judged) else ""
    print(f"score: {len(scores)} images of {len(models)} models{told} -> {REPORTS / 'metrics.json'}")


if __name__ == "__main__":
    run_stage(main)
