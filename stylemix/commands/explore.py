"""A pair's mixing lab (explore@P in dvc.yaml): its Pareto front and best point, and one point saved
as a combination in params.yaml, so the next `dvc repro` merges, draws and scores it like any other.

    stylemix explore flat_lineart                         # the Pareto front, the best point starred
    stylemix explore flat_lineart --save inked_flat # the best point -> merge.combos.inked_flat
    stylemix explore flat_lineart --save inked_flat --point 0.75,0.75 --method linear
"""
import argparse
import json

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from stylemix import params
from stylemix.errors import StyleMixError
from stylemix.mixing.exploring import plane
from stylemix.mixing.mixes import save_mix
from stylemix.paths import EXPLORE, PARAMS_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pair", help="a pair in params.yaml's merge.explore.pairs")
    parser.add_argument("--save", metavar="NAME", help="write the point as merge.combos.NAME in params.yaml")
    parser.add_argument("--point", help="WEIGHT_A,WEIGHT_B: a point of the plane (default: the best point)")
    parser.add_argument("--method", help="with --point, the method's plane (default: the pair's first method)")


def chosen(table: pd.DataFrame, pair: params.ExplorePair, point: str | None, method: str | None) -> pd.Series | None:
    """The row of --point (and --method), else the best point's; None when the pair has no best."""
    a, b = pair.styles
    if point is None:
        return table[table["best"]].iloc[0] if table["best"].any() else None
    try:
        wa, wb = (float(v) for v in point.split(","))
    except ValueError:
        raise StyleMixError(f"--point {point!r}: write the two weights as {a},{b}, e.g. 0.5,0.75") from None
    method = method or pair.methods[0]
    rows = table[(table["method"] == method) & (table[f"w_{a}"] == wa) & (table[f"w_{b}"] == wb)]
    if rows.empty:
        raise StyleMixError(f"--point {point} --method {method}: not in the plane; its weights are "
                            f"{', '.join(f'{w:g}' for w in pair.weights)} and methods {', '.join(pair.methods)}")
    return rows.iloc[0]


def run(args: argparse.Namespace) -> None:
    pairs = params.load("merge").merge.explore.pairs
    if args.pair not in pairs:
        raise StyleMixError(f"unknown pair {args.pair!r}; merge.explore.pairs are: {', '.join(pairs) or 'none'}")
    pair, folder = pairs[args.pair], EXPLORE / args.pair
    if not (folder / "points.csv").is_file():
        raise StyleMixError(f"{folder / 'points.csv'} missing: run `dvc repro explore@{args.pair}` first")
    table = pd.read_csv(folder / "points.csv")
    metrics = json.loads((folder / "metrics.json").read_text())
    a, b = pair.styles
    if set(zip(table["method"], table[f"w_{a}"], table[f"w_{b}"])) != set(plane(pair)):
        print(f"warning: {folder} is not params.yaml's plane for {args.pair} (changed since): `dvc repro explore@{args.pair}`")
    row = chosen(table, pair, args.point, args.method)
    marked = table[table["pareto"]] if row is None else pd.concat([table[table["pareto"]], row.to_frame().T]).drop_duplicates()
    view = Table("", "method", "weights", "similarity", "share", "CLIP score", "bleed",
                 title=f"{args.pair}: the Pareto front (CLIP score >= {metrics['content_floor']:.3g}), {a} / {b}; * the chosen point")
    for i, r in marked.iterrows():
        view.add_row("*" if row is not None and i == row.name else "", r["method"], f"{r[f'w_{a}']:g} / {r[f'w_{b}']:g}",
                     f"{r[f'sim_{a}']:+.3f} / {r[f'sim_{b}']:+.3f}", f"{r[f'share_{a}']:.0%} / {r[f'share_{b}']:.0%}",
                     f"{r['clip_score']:.3f}", f"{r['bleed']:.3f}")
    Console().print(view)
    if not args.save:
        return
    if row is None:
        why = (f"{', '.join(metrics['not_learned'])} learned nothing" if metrics["not_learned"] else
               "no mix keeps the content and some of both styles")
        raise StyleMixError(f"{args.pair} has no best mix ({why}): pick a point with --point WEIGHT_A,WEIGHT_B")
    weights = {a: float(row[f"w_{a}"]), b: float(row[f"w_{b}"])}
    if not all(weights.values()):
        raise StyleMixError(f"{a} {weights[a]:g}, {b} {weights[b]:g} is one style alone, not a mix: pick a point with both weights")
    raw = yaml.safe_load(PARAMS_FILE.read_text())["merge"]["explore"]["pairs"][args.pair]  # blocks, schedule as written
    extra = ({"method": row["method"]} if row["method"] != "linear" else {}) | {k: raw[k] for k in ("rank", "density", "seed") if k in raw}
    extra |= {k: raw[k] for k in ("blocks", "schedule") if raw.get(k)}
    mix = save_mix(args.save, weights, extra=extra)
    print(f"merge.combos.{args.save} = {mix}{' ' + str(extra) if extra else ''} written to {PARAMS_FILE}: "
          f"`dvc repro` merges, draws and scores it")
