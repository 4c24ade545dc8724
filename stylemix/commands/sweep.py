"""Compare experiments over two params, as a heatmap per metric and an image grid.

    dvc exp run --queue -S lora.rank=4,8,16 -S lora.alpha=4,8,16,32 && dvc queue start
    stylemix sweep                  # after the queue is done: rows lora.rank, columns lora.alpha
    stylemix sweep --rows train.lr --cols lora.rank --model openmoji --prompt 2 --metric '*final_loss'

The table is `dvc exp show --json`'s, through `dvc.api.exp_show`; each experiment's image comes
out of the DVC cache at its commit (`dvc.api.open`), so nothing is checked out or regenerated.
Writes reports/sweep/: heatmaps.png, images.png and sweep.csv (one row per experiment).
"""
import argparse
import fnmatch
import io
from pathlib import Path

import dvc.api
import pandas as pd
from PIL import Image

from stylemix import params
from stylemix.commands.queue import workers
from stylemix.errors import StyleMixError
from stylemix.evaluation.plots import heatmaps, label
from stylemix.images import grid
from stylemix.outputs import atomic_dir
from stylemix.paths import IMAGES, SWEEP, image_name

DEFAULT_METRICS = ("*models.*.clip_score.mean", "*models.*.style_gain_over_base", "*train/*/metrics.json:final_loss")


def column(table: pd.DataFrame, key: str) -> str:
    """The column for a params or metrics key: DVC prefixes `file:` only where names would clash."""
    matches = [c for c in table.columns if c == key or c.endswith(":" + key)]
    if len(matches) != 1:
        raise StyleMixError(f"`dvc exp show` has {'no' if not matches else 'several'} column {key!r}: "
                            f"pass one of the params you swept (e.g. --rows lora.rank --cols lora.alpha)")
    return matches[0]


def experiments(rows: str, cols: str, repo: str = ".") -> pd.DataFrame:
    """Every finished experiment (and commit) with a value for both params; for a repeated pair of
    values the newest wins. Index: (row value, column value)."""
    table = pd.DataFrame(dvc.api.exp_show(repo))
    if table.empty:
        raise StyleMixError("no experiments: run `dvc exp run --queue -S ...` and `dvc queue start` first")
    r, c = column(table, rows), column(table, cols)
    queued, alive = int((table["State"] == "Queued").sum()), workers(repo)
    if alive and not queued and not (table["State"] == "Running").any():
        print(f"sweep: nothing is queued or running, yet {len(alive)} queue worker(s) still run "
              f"({', '.join(alive)}): `dvc queue stop` ends them")
    if queued and not alive:
        print(f"sweep: {queued} experiment(s) still queued and no queue worker runs: `dvc queue start` picks them up")
    done = table[(table["rev"] != "workspace") & ~table["State"].isin(["Queued", "Running", "Failed"])]
    done = done.dropna(subset=[r, c]).sort_values("Created", ascending=False, na_position="last")
    done = done.drop_duplicates([r, c]).set_index([r, c]).sort_index()
    if done.empty:
        raise StyleMixError(f"no finished experiment sets both {rows} and {cols}; `dvc queue status` shows the queue")
    return done


def metric_columns(table: pd.DataFrame, patterns: list[str]) -> list[str]:
    picked = [c for c in table.columns if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    numeric = [c for c in picked if pd.to_numeric(table[c], errors="coerce").notna().any()]
    if not numeric:
        raise StyleMixError(f"no metric matches {patterns}; `dvc exp show` lists the metric names")
    return numeric


def image_grid(table: pd.DataFrame, model: str, prompt: int, seed: int, rows: str, cols: str, repo: str = ".") -> Image.Image:
    """The same prompt and seed of `model` in every experiment: rows and columns are the two params."""
    path = (IMAGES / model / image_name(prompt, seed)).as_posix()
    row_values = table.index.get_level_values(0).unique()
    col_values = table.index.get_level_values(1).unique()
    blank = Image.new("RGB", (64, 64), "#bbb")
    grid_rows = []
    for r in row_values:
        images = []
        for c in col_values:
            if (r, c) not in table.index:
                images.append(blank)
                continue
            try:
                with dvc.api.open(path, repo=repo, rev=table.loc[(r, c), "rev"], mode="rb") as f:
                    images.append(Image.open(io.BytesIO(f.read())))
            except FileNotFoundError as e:
                raise StyleMixError(f"{path} is not in experiment {table.loc[(r, c), 'Experiment']}: "
                                    f"pick a model, prompt and seed that the experiments generated") from e
        grid_rows.append((f"{rows} = {label(r)}", images))
    return grid(grid_rows, [f"{cols} = {label(c)}" for c in col_values], f"{model}: prompt {prompt}, seed {seed}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", default="lora.rank", help="params key for the rows (default lora.rank)")
    parser.add_argument("--cols", default="lora.alpha", help="params key for the columns (default lora.alpha)")
    parser.add_argument("--metric", action="append", help="metric name or glob, repeatable (default: CLIP "
                        "score and style gain per model, final loss per style)")
    parser.add_argument("--model", help="style or combination whose images to grid (default: the first style)")
    parser.add_argument("--prompt", type=int, default=0, help="index into generate.prompts")
    parser.add_argument("--seed", type=int, help="one of generate.seeds (default: the first)")
    parser.add_argument("-o", "--out", type=Path, default=SWEEP)


def run(args: argparse.Namespace) -> None:
    table = experiments(args.rows, args.cols)
    metrics = metric_columns(table, args.metric or list(DEFAULT_METRICS))
    p = params.load("styles", "generate")
    model = args.model or next(iter(p.styles))
    seed = p.generate.seeds[0] if args.seed is None else args.seed
    with atomic_dir(args.out) as tmp:
        table[["Experiment", "rev"] + metrics].reset_index().to_csv(tmp / "sweep.csv", index=False)
        panels = [(m.split(":")[-1].removeprefix("models."), table[m].unstack()) for m in metrics]  # heatmaps makes them numbers
        heatmaps(panels, args.rows, args.cols, tmp / "heatmaps.png")
        image_grid(table, model, args.prompt, seed, args.rows, args.cols).save(tmp / "images.png")
    print(f"sweep: {len(table)} experiments x {len(metrics)} metrics -> {args.out}/heatmaps.png, images.png, sweep.csv")
