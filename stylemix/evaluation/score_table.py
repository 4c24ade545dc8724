"""The scores table per model, one for the report and the web UI: the CLIP score and each style's
similarity with their 95% bootstrap intervals, and the style gain over the base."""
import pandas as pd


def interval(stat: dict) -> str:
    """A bootstrapped statistic of reports/metrics.json as `mean [low, high]`."""
    return f"{stat['mean']:.4f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"


def scores_table(metrics: dict, own: dict[str, set[str]] | None = None) -> pd.DataFrame:
    """One row per model of reports/metrics.json; the cells of a model's own styles (`own`) in bold,
    for markdown."""
    rows = []
    for model, m in metrics["models"].items():
        mine = (own or {}).get(model, set())
        row = {"model": model, "CLIP score [95% CI]": interval(m["clip_score"])}
        for style, stat in m["style_similarity"].items():
            row[f"style similarity: {style}"] = f"**{interval(stat)}**" if style in mine else interval(stat)
        rows.append(row | {"gain over base": f"{m['style_gain_over_base']:+.4f}" if "style_gain_over_base" in m else ""})
    return pd.DataFrame(rows)
