"""Benchmark: what each training option does to a style LoRA, judged by the emoji demo's ground truth.
Trains two demo styles on two train seeds with each option over the demo's params (the workspace's
encoded data: run `make repro` first), draws the held-out subjects (generate.prompts x seeds, at
strength 1) and judges the pictures as the score stage does (stylemix.evaluation.ground_truth):

- style_accuracy:   share of the pictures the demo scorer puts in the style's own look, among six;
- subject_accuracy: share put on the right subject among the 12 held-out names;
- nearness_gain:    cosine to the real picture of the subject in the look, minus the base's pictures';
- val_gain:         1 - held-out loss / the base's, on the style's held-out pictures;
- step_ratio:       time a step (the whole training over its steps) / the default's, same style and seed;
- state_ratio:      bytes of the optimizer's state and the EMA's copy / the default's (AdamW's two moments).
  Only these differ in memory between the options (the frozen base and activations are the same);
  peak resident memory in one long CPU process is not a fair reading, since freed memory stays.

A picture of the JSON, style accuracy against subject accuracy per option, goes beside it (.png).

    make repro && python bench/train_options.py                   # writes bench/results/train_options.json
    python bench/train_options.py later ema --seeds 0             # some options, and the default
    # on 2 cores, a seed a process at one thread each, then one JSON of both (~45 min for all ten):
    python bench/train_options.py --seeds 0 --threads 1 --out a.json & python bench/train_options.py --seeds 1 --threads 1 --out b.json
    python bench/train_options.py --rows a.json b.json
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stages.prior import build_prior  # noqa: E402
from stylemix import params  # noqa: E402
from stylemix.drawing.drawer import Drawer  # noqa: E402
from stylemix.evaluation import ground_truth, scoring  # noqa: E402
from stylemix.paths import TRUTH  # noqa: E402
from stylemix.training.loop import train_style  # noqa: E402

STYLES = ["lineart", "fluent"]
PRIOR = {"images": 60, "prompts": "subjects", "steps": 20}  # prompts: 60 subjects, none held out
OPTIONS = {  # name -> train params over the demo's (train.lr 2e-3, cosine, AdamW); `lora`: lora params, `prior`: the prior's
    "default": {},
    "earlier": {"timesteps": {"sampling": "earlier", "multiplier": 3}},  # the quarter of least noise, 3x as often
    "later": {"timesteps": {"sampling": "later", "multiplier": 3}},  # the noisiest quarter, 3x as often
    "logit_normal": {"timesteps": {"sampling": "logit_normal"}},
    "ema": {"ema": {"enabled": True, "decay": 0.99}},
    "prodigy": {"optimizer": "prodigy", "lr": 1.0},  # its authors' setting: it finds the step size
    "lion": {"optimizer": "lion", "lr": 2e-4},  # a tenth of AdamW's, as Lion's authors advise
    "adafactor": {"optimizer": "adafactor"},
    "came": {"optimizer": "came", "lr": 2e-4},  # its own default: at AdamW's 2e-3 it diverged here
    "schedule_free_adamw": {"optimizer": "schedule_free_adamw", "scheduler": "constant"},
    "masked": {"masked_loss": {"enabled": True}},  # the emoji's alpha: the background at 0.1
    "prior": {"prior": PRIOR},  # the base's own pictures of 60 subjects (no trigger), learnt at weight 1
    # where the LoRA goes and what it is (lora.*), beside the training options
    "locon": {"lora": {"conv_rank": 4}},
    "loha": {"lora": {"type": "loha"}},
    "rank16": {"lora": {"rank": 16, "alpha": 16}},
    # combinations of the levers above that moved style accuracy most (issue 36's bar)
    "later_came": {"timesteps": {"sampling": "later", "multiplier": 3}, "optimizer": "came", "lr": 2e-4},
    "prodigy_d05": {"optimizer": "prodigy", "lr": 1.0, "optimizer_args": {"d_coef": 0.5}},
    "later_lr4e-3": {"timesteps": {"sampling": "later", "multiplier": 3}, "lr": 4e-3},
}
OUT = Path(__file__).parent / "results" / "train_options.json"
MEASURES = ("style_accuracy", "subject_accuracy", "nearness_gain", "val_gain", "step_ratio", "state_ratio")


def prior_prompts(p: params.Params) -> list[str]:
    """PRIOR's subjects, in words: a seeded choice of those not held out."""
    from stylemix import emoji

    rest = [s for s in emoji.subjects() if s not in set(p.sample.heldout)]
    order = torch.randperm(len(rest), generator=torch.Generator().manual_seed(0))[: PRIOR["images"]]
    return [emoji.words(rest[i]) for i in order.tolist()]


def judged(scorer, truth, frames: list[pd.DataFrame], embeddings: list[torch.Tensor]) -> dict:
    return ground_truth.summarize(ground_truth.judge(pd.concat(frames, ignore_index=True), torch.cat(embeddings), truth, scorer), truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("options", nargs="*", help=f"these and the default (none: all): {', '.join(OPTIONS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="train seeds")
    parser.add_argument("--styles", nargs="+", default=STYLES, help=f"styles to train (default: {' '.join(STYLES)})")
    parser.add_argument("--max-steps", type=int, help="train this many steps, not the demo's (a quick look)")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: all cores)")
    parser.add_argument("--rows", type=Path, nargs="+", help="train nothing: summarise these runs' JSON into --out "
                        "(a later run's row of the same option, style and seed replaces an earlier one)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.rows:
        runs = [json.loads(path.read_text()) for path in args.rows]
        about = runs[0] | {"seeds": sorted({s for run in runs for s in run["seeds"]}),
                           "options": {k: v for run in runs for k, v in run["options"].items()}}
        return write(args.out, {k: v for k, v in about.items() if k not in ("rows", "mean", "by_style")},
                     [row for run in runs for row in run["rows"]])
    if args.threads:
        torch.set_num_threads(args.threads)
    if unknown := set(args.options) - set(OPTIONS):
        parser.error(f"unknown option(s) {', '.join(sorted(unknown))}; there are: {', '.join(OPTIONS)}")
    options = {o: OPTIONS[o] for o in OPTIONS if not args.options or o == "default" or o in args.options}
    p = params.load("base", "styles", "lora", "train", "validation", "generate", "score", "sample")
    truth = ground_truth.load_truth(TRUTH)
    if truth is None:
        sys.exit(f"no ground truth in {TRUTH}: run `make repro` (the sample stage writes it) first")
    scorer = scoring.load_scorer(p.score)
    prompts = [q for q in p.generate.prompts for _ in p.generate.seeds]
    seeds = [s for _ in p.generate.prompts for s in p.generate.seeds]
    frame = lambda model: pd.DataFrame({"model": model, "prompt": prompts, "seed": seeds})  # noqa: E731
    base = scoring.embed_images(scorer, [im for im, _ in Drawer(p.base, roots=()).draw_batch(prompts, {}, seeds, p.generate)])
    base_stats = judged(scorer, truth, [frame("base")], [base])
    about = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "styles": args.styles,
             "seeds": args.seeds, "threads": torch.get_num_threads(), "options": options,
             "base": {"style_accuracy": {s: base_stats["style_accuracy"]["base"][s] for s in args.styles},
                      "subject_accuracy": base_stats["models"]["base"]["subject_accuracy"]["mean"]}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:  # seed by seed, so a stopped run has every option of its first seeds
            for option, train in options.items():
                train = dict(train)
                prior = params.Prior(**PRIOR | {"prompts": prior_prompts(p)}) if train.pop("prior", None) else None
                lora = params.Lora.model_validate(p.lora.model_dump() | train.pop("lora", {}))
                q = p.model_copy(update={"train": params.Train.model_validate(p.train.model_dump() | train | {"seed": seed, "max_steps": args.max_steps}),
                                         "prior": prior, "lora": lora})
                root = Path(tmp) / f"{option}-{seed}"
                if prior and not (root.parent / "prior").is_dir():  # drawn once for every seed
                    build_prior(prior, p.base, root.parent / "prior")
                for style in args.styles:
                    started = time.perf_counter()
                    summary = train_style(style, q, out=root / "lora", ckpt_root=root / "ckpt", logs=root / "logs",
                                          prior_dir=root.parent / "prior")
                    seconds = time.perf_counter() - started
                    drawn = Drawer(p.base, roots=(root / "lora",)).draw_batch(prompts, {style: 1.0}, seeds, p.generate)
                    images = scoring.embed_images(scorer, [im for im, _ in drawn])
                    stats = judged(scorer, truth, [frame("base"), frame(style)], [base, images])["models"][style]
                    rows.append({"option": option, "seed": seed, "style": style, "steps": summary["steps"],
                                 "step_s": seconds / summary["steps"],
                                 "state_mb": summary["state_bytes"] / 2**20,
                                 "style_accuracy": stats["style_accuracy"]["mean"],
                                 "subject_accuracy": stats["subject_accuracy"]["mean"],
                                 "nearness_gain": stats["nearness_gain"],
                                 "val_gain": 1 - summary["val_loss"] / summary["val_loss_base"]})
                    print(json.dumps(rows[-1]), flush=True)
                    write(args.out, about, rows)


def write(out: Path, about: dict, rows: list[dict]) -> None:
    """The JSON of the rows so far, with ratios to the default of the same style and seed, and means
    per option (over styles and seeds) and per option and style (over seeds)."""
    table = pd.DataFrame(rows).drop_duplicates(["option", "style", "seed"], keep="last")
    if "step_ratio" not in table:  # this run's rows (--rows keeps each run's own ratios)
        default = table[table.option == "default"].set_index(["style", "seed"])
        at = pd.MultiIndex.from_frame(table[["style", "seed"]])
        table["step_ratio"] = table["step_s"].to_numpy() / default["step_s"].reindex(at).to_numpy()
        table["state_ratio"] = table["state_mb"].to_numpy() / default["state_mb"].reindex(at).to_numpy()
    mean = table.groupby("option")[list(MEASURES)].mean().round(4)
    mean = mean.reindex([o for o in OPTIONS if o in mean.index])
    by_style = table.groupby(["option", "style"], sort=False)[list(MEASURES[:4])].mean().round(4)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(about | {
        "rows": table.to_dict("records"), "mean": mean.to_dict("index"),
        "by_style": {o: by_style.loc[o].to_dict("index") for o in mean.index}}, indent=2) + "\n")
    plot(out.with_suffix(".png"), mean, about["base"])
    print("\n".join(f"{o:20s} " + "  ".join(f"{k} {x:.3f}" for k, x in m.items()) for o, m in mean.iterrows()))


def plot(path: Path, mean: pd.DataFrame, base: dict) -> None:
    """The trade-off in one picture: each option's style accuracy against its subject accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(mean["subject_accuracy"], mean["style_accuracy"], c=mean["nearness_gain"], cmap="viridis", s=60)
    labels: dict[tuple[float, float], list[str]] = {}  # options drawn on one spot share a label
    for option, m in mean.iterrows():
        at = (m["subject_accuracy"], m["style_accuracy"])
        near = next((p for p in labels if abs(p[0] - at[0]) < 0.015 and abs(p[1] - at[1]) < 0.015), at)
        labels.setdefault(near, []).append(option)
    for at, options in labels.items():
        ax.annotate(", ".join(options), at, xytext=(4, 4), textcoords="offset points", fontsize=8)
    base_style = sum(base["style_accuracy"].values()) / len(base["style_accuracy"])
    ax.scatter([base["subject_accuracy"]], [base_style], color="#999", marker="s", s=60)
    ax.annotate("base", (base["subject_accuracy"], base_style), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.set_xlabel("subject accuracy on held-out subjects (the base's: grey)")
    ax.set_ylabel("style accuracy: pictures in the style's own look")
    ax.set_title("training options on the demo (colour: nearness to the truth)", fontsize=9)
    fig.colorbar(ax.collections[0], ax=ax, label="nearness gain over the base")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

if __name__ == "__main__":
    main()
