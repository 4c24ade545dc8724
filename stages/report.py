"""report: comparison grids and reports/report.md (metrics table, grids, loss curves, filter summary)."""
import json
from pathlib import Path

import pandas as pd
from PIL import Image

from stylemix import params
from stylemix.errors import StyleMixError, run_stage
from stylemix.evaluation.ground_truth import load_truth
from stylemix.evaluation.score_table import interval, scores_table
from stylemix.images import grid, image_files
from stylemix.outputs import atomic_dir, atomic_write
from stylemix.paths import FILTER_REPORTS, GRIDS, IMAGES, REPORTS, STRENGTH_IMAGES, TOKEN_IMAGES, TRAIN_LOGS, TRUTH, VALIDATION, image_name


def comparison_grids(models: list[str], out: Path, images: Path = IMAGES) -> list[tuple[str, str]]:
    """One grid per prompt (rows: models, columns: seeds) and an overview (columns: prompts, first
    seed). Returns (file name, caption) per grid."""
    files = image_files(images / "base")
    if not files:
        raise StyleMixError(f"{images / 'base'} has no images; run `dvc repro generate_base` first")
    prompts = {int(f.stem.split("_")[0][1:]): Image.open(f).text["base_prompt"] for f in files}
    seeds = sorted({int(f.stem.split("_s")[1]) for f in files})
    made = []
    for i, prompt in sorted(prompts.items()):
        rows = [(m, [Image.open(images / m / f"p{i}_s{s}.png") for s in seeds]) for m in models]
        grid(rows, [f"seed {s}" for s in seeds], prompt).save(out / f"prompt_{i}.png")
        made.append((f"prompt_{i}.png", prompt))
    rows = [(m, [Image.open(images / m / f"p{i}_s{seeds[0]}.png") for i in sorted(prompts)]) for m in models]
    labels = [prompt if len(prompt) <= 16 else prompt[:15] + "…" for _, prompt in sorted(prompts.items())]
    grid(rows, labels, f"all models, seed {seeds[0]}").save(out / "overview.png")
    return [("overview.png", "every model on every prompt")] + made


def token_grids(models: list[str], out: Path, images: Path = IMAGES) -> list[tuple[str, str]]:
    """For each model with new concept tokens, the same prompts at each token (rows: tokens,
    columns: prompts), as the storyboard reference showed its shot types."""
    made = []
    for model in models:
        files = image_files(images / model / TOKEN_IMAGES) if (images / model / TOKEN_IMAGES).is_dir() else []
        if not files:
            continue
        index = {tuple(int(part[1:]) for part in f.stem.split("_")): f for f in files}  # (token, prompt, seed)
        tokens, prompts = sorted({k for k, _, _ in index}), sorted({i for _, i, _ in index})
        seed = next(iter(index))[2]
        rows = [(Image.open(index[k, prompts[0], seed]).text["token"], [Image.open(index[k, i, seed]) for i in prompts])
                for k in tokens]
        grid(rows, [f"prompt {i}" for i in prompts], f"{model}: each new token, seed {seed}").save(out / f"tokens_{model}.png")
        made.append((f"tokens_{model}.png", f"{model}: the same prompts at each new token"))
    return made


def strength_grid(models: list[str], out: Path, images: Path = IMAGES) -> list[tuple[str, str]]:
    """The base, then each style and combination at each of its strengths (rows), on every prompt at
    the seed they were drawn with (columns): how a style comes in as its weight rises."""
    drawn = {m: {tuple(float(part[1:]) for part in f.stem.split("_")): f for f in image_files(images / m / STRENGTH_IMAGES)}
             for m in models if (images / m / STRENGTH_IMAGES).is_dir()}  # (strength, prompt, seed) -> file
    if not drawn:
        return []
    _, _, seed = next(iter(next(iter(drawn.values()))))
    prompts = sorted({int(i) for index in drawn.values() for _, i, _ in index})
    at_one = lambda model: [images / model / image_name(i, int(seed)) for i in prompts]  # noqa: E731
    rows = [("base", at_one("base"))]
    for model, index in drawn.items():
        for w in sorted({w for w, _, _ in index} | {1.0}):
            rows.append((f"{model} {w:g}", at_one(model) if w == 1.0 else [index[w, i, seed] for i in prompts]))
    rows = [(label, [Image.open(f) for f in files]) for label, files in rows]
    title = f"each style and combination at each strength, seed {seed:g}"
    grid(rows, [f"prompt {i}" for i in prompts], title).save(out / "strengths.png")
    return [("strengths.png", "every style and combination at each strength")]


def truth_grid(styles: list[str], out: Path, images: Path = IMAGES, truth_dir: Path = TRUTH) -> list[tuple[str, str]]:
    """The held-out subjects (columns) drawn by the base, then by each style under its look's real pictures:
    what each LoRA drew of a subject it never saw, beside the answer (the first seed's pictures)."""
    truth = load_truth(truth_dir)
    files = image_files(images / "base")
    first = min(int(f.stem.split("_s")[1]) for f in files)
    drawn = {Image.open(f).text["base_prompt"]: f.name for f in files if f.stem.endswith(f"_s{first}")}
    captions = [c for c in truth.captions if c in drawn] if truth else []
    if not captions:
        return []
    rows = [("base", [Image.open(images / "base" / drawn[c]) for c in captions])]
    for style in (s for s in styles if s in truth.looks):
        real = dict(zip(truth.captions, truth.files[style]))
        rows += [(f"{style}: real", [Image.open(real[c]) for c in captions]),
                 (f"{style} LoRA", [Image.open(images / style / drawn[c]) for c in captions])]
    grid(rows, captions, "held-out subjects: the base, and each style's LoRA under the real pictures of its look",
         tile=96).save(out / "truth.png")
    return [("truth.png", "each style on subjects it never saw, under the real pictures")]


def loss_plot(styles: list[str], path: Path, logs: Path = TRAIN_LOGS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for style in styles:
        curve = pd.read_csv(logs / style / "plots/metrics/loss.tsv", sep="\t")
        line, = ax.plot(curve["step"], curve["loss"].rolling(10, min_periods=1).mean(), label=style)
        held = logs / style / "plots/metrics/val_loss.tsv"  # with train.validate_every
        if held.is_file():
            curve = pd.read_csv(held, sep="\t")
            ax.plot(curve["step"], curve["val_loss"], "--", color=line.get_color(), label=f"{style} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (10-step mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def metrics_table(metrics: dict, combos: dict[str, params.Combo]) -> str:
    """The scores table, each model's own styles in bold (a combination's: its components)."""
    own = {model: set(combos[model].weights) if model in combos else {model} for model in metrics["models"]}
    return scores_table(metrics, own).to_markdown(index=False, disable_numparse=True)  # "+0.1000" stays as written


def validation_table(validation: dict) -> str:
    """The cross-style matrix as a table: rows are models, columns styles' held-out images; each
    column's lowest loss in bold, and whether it is that style's own LoRA."""
    styles = list(validation["loss"]["base"])
    lines = ["| model | " + " | ".join(f"{s} held-out" for s in styles) + " |", "|---|" + "---|" * len(styles)]
    for model, row in validation["loss"].items():
        best = [min(validation["loss"], key=lambda m: validation["loss"][m][s]) == model for s in styles]
        cells = [f"**{row[s]:.4f}**" if b else f"{row[s]:.4f}" for s, b in zip(styles, best)]
        lines.append(f"| {model if model == 'base' else model + ' LoRA'} | " + " | ".join(cells) + " |")
    verdict = ", ".join(f"{s}: {'yes' if ok else '**no**'} ({validation['own_gain_over_base'][s]:+.4f} vs base)"
                        for s, ok in validation["own_style_best"].items())
    return "\n".join(lines) + f"\n\nOwn LoRA best on its style (gain over base): {verdict}."


def ground_truth_section(metrics: dict) -> list[str]:
    """The ground truth's tables: the model x look matrix of style accuracy (its diagonal is each
    style's own look), and per model its subject accuracy and nearness to the real pictures."""
    truth = metrics.get("ground_truth")
    if not truth:
        return []
    looks = truth["looks"]
    lines = ["| model | " + " | ".join(looks) + " |", "|---|" + "---|" * len(looks)]
    for model, row in truth["style_accuracy"].items():
        cells = [f"**{row[look]:.2f}**" if look == model else f"{row[look]:.2f}" for look in looks]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    per_model = ["| model | pictures | style accuracy [95% CI] | base in that look | subject accuracy [95% CI] | "
                 "nearness to the real picture [95% CI] | base's nearness |", "|---|---|---|---|---|---|---|"]
    for model, m in truth["models"].items():
        style = interval(m["style_accuracy"]) if "style_accuracy" in m else ""
        near = interval(m["nearness"]) if "nearness" in m else ""
        base_style = f"{m['style_accuracy_base']:.2f}" if "style_accuracy_base" in m else ""
        base_near = f"{m['nearness_base']:.4f}" if "nearness_base" in m else ""
        per_model.append(f"| {model} | {m['pictures']} | {style} | {base_style} | {interval(m['subject_accuracy'])} | {near} | {base_near} |")
    chance = truth["chance"]
    return ["## Drawing subjects no LoRA saw (ground truth)\n",
            f"The held-out subjects ({', '.join(truth['subjects'])}) are in no style's training pictures; their real "
            f"pictures in every look are the answer. **Style accuracy**: the share of a model's pictures of them that the "
            f"scorer puts nearest each look's real pictures (rows: models, columns: looks; chance {chance['style']:.2f}). "
            f"**Subject accuracy**: the share it reads as the right subject among the held-out names (chance "
            f"{chance['subject']:.2f}). **Nearness**: cosine to the real picture of the same subject in the style's look.\n",
            "\n".join(lines) + "\n", "![style accuracy](plots/scores/style_accuracy.png)\n", "\n".join(per_model) + "\n",
            "![each style on subjects it never saw](grids/truth.png)\n"]


def filter_table(styles: list[str]) -> str:
    """Kept and rejected images per style, and the kept ones' aspect-ratio buckets (with a chart
    where a style has more than one)."""
    lines, charts = ["| style | kept | rejected | why | buckets (width x height: images) |", "|---|---|---|---|---|"], []
    for s in styles:
        summary = json.loads((FILTER_REPORTS / s / "summary.json").read_text())
        why = ", ".join(f"{n} {r}" for r, n in summary["rejected_by_reason"].items())
        shapes = ", ".join(f"{b}: {n}" for b, n in summary["buckets"].items())
        lines.append(f"| {s} | {summary['kept']} | {summary['rejected']} | {why} | {shapes} |")
        if len(summary["buckets"]) > 1:
            charts.append(f"![{s}: images per bucket](filter/{s}/buckets.png)")
    return "\n".join(lines) + "".join(f"\n\n{c}" for c in charts)


def explore_section(pairs: dict[str, params.ExplorePair]) -> list[str]:
    """Links to each pair's mixing-lab plots (explore@P writes them; the report only points at them)."""
    if not pairs:
        return []
    md = ["## Mixing lab\n",
          "Each pair of styles over a plane of weights (`merge.explore`, stage `explore@<pair>`), every point drawing the "
          "same prompts and seeds. The Pareto front: the points no other beats on both style similarities, among those "
          "keeping the content (CLIP score at least `content_kept` of the base's); the star: the best mix (both weights "
          "non-zero, the content kept), whose smaller share of the two styles' gains is largest. Bleed: how far the mix "
          "moves prompts without triggers from the base's pictures. Every point in `explore/<pair>/points.csv`, the best in `explore/<pair>/metrics.json`; "
          "`stylemix explore <pair> --save NAME` makes the best point (or `--point A,B`) `merge.combos.NAME`.\n"]
    for name, pair in pairs.items():
        md += [f"### {name}: {' x '.join(pair.styles)}\n", f"![{name}: Pareto front](explore/{name}/plots/pareto.png)\n",
               f"![{name}: each score over the plane](explore/{name}/plots/heatmaps.png)\n"]
        md += [f"![{name}: {m}](explore/{name}/plots/grid_{m}.png) ![{name}: {m}, bleed](explore/{name}/plots/bleed_{m}.png)\n"
               for m in pair.methods]
    return md


def main() -> None:
    p = params.load("styles", "merge")
    styles, combos = list(p.styles), p.merge.combos
    models = ["base", *styles, *combos]
    metrics = json.loads((REPORTS / "metrics.json").read_text())
    validation = json.loads(VALIDATION.read_text())
    with atomic_dir(GRIDS) as tmp:
        grids = comparison_grids(models, tmp)
        truth = truth_grid(styles, tmp)
        tokens = token_grids(models, tmp)
        strengths = strength_grid(models, tmp)
    loss_plot(styles, REPORTS / "plots" / "loss.png")
    scorer = metrics["scorer"]
    warning, weights = "", scorer["clip_pretrained"] or "its folder"
    if scorer.get("about"):
        warning = f"> **Scorer:** {scorer['about']}.\n\n"
    elif not scorer["scorer_pretrained"]:
        weights = "none, random"
        warning = ("> **Demo numbers: not meaningful.** The CLIP scorer is randomly initialised "
                   "(`score.clip_pretrained: null`); the held-out validation below does not depend on it. "
                   "Set `score.clip_pretrained: openai` and a real base model for numbers that mean something.\n\n")
    md = [
        "# stylemix report\n",
        warning + f"Base model and LoRAs per `params.yaml`; scorer: open_clip `{scorer['clip_model']}` "
        f"(weights: `{weights}`). Bold: a model's own style(s).\n",
        *ground_truth_section(metrics),
        "## Did each LoRA learn its style?\n",
        "Held-out denoising loss (images no training saw; fixed timesteps "
        f"{', '.join(map(str, validation['timesteps']))} and fixed noise): every style's LoRA and the base on every "
        "style's held-out images. A LoRA that learned its style is lowest in its own column.\n",
        validation_table(validation) + "\n", "![validation matrix](plots/validation.png)\n",
        "## Scores\n", metrics_table(metrics, combos) + "\n",
        "![CLIP score](plots/scores/clip_score.png)\n",
        *[f"![style similarity to {s}](plots/scores/style_similarity_{s}.png)\n" for s in styles],
        "## Comparison grids\n", "Rows: models (base, each style, each combination); same prompts and seeds in every row.\n",
        *[f"### {caption}\n\n![{caption}](grids/{name})\n" for name, caption in grids],
        *(["## Strengths\n", "Rows: each style and combination at each weight of `generate.strengths` (users apply style "
           "LoRAs at 0.6 to 0.8, not only at 1); the base on top.\n"] if strengths else []),
        *[f"![{caption}](grids/{name})\n" for name, caption in strengths],
        *(["## New tokens\n", "Rows: a model's new concept tokens, each added to the same prompts.\n"] if tokens else []),
        *[f"### {caption}\n\n![{caption}](grids/{name})\n" for name, caption in tokens],
        *explore_section(p.merge.explore.pairs),
        "## Training loss\n", "![loss curves](plots/loss.png)\n",
        "## Filtered images\n", filter_table(styles) + "\n",
    ]
    atomic_write(REPORTS / "report.md", "\n".join(md))
    print(f"report: {REPORTS / 'report.md'} with {len(grids) + len(truth) + len(tokens) + len(strengths)} grids")


if __name__ == "__main__":
    run_stage(main)
