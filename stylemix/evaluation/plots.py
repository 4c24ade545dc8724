"""Heatmaps over two settings, each cell's value written in it: what `stylemix sweep` (two swept
params) and explore@P (two styles' weights) draw; and bar charts of counts (filter@S's buckets)."""
import math
from pathlib import Path

import pandas as pd


def label(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def heatmaps(panels: list[tuple[str, pd.DataFrame]], rows: str, cols: str, path: Path, per_row: int = 4) -> None:
    """One heatmap per (title, table): the table's index along the y axis, its columns along x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(per_row, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    cells = max(t.shape[1] for _, t in panels), max(t.shape[0] for _, t in panels)  # panels grow with their tables
    width, height = max(3.6, 1.8 + 0.65 * cells[0]), max(3.2, 1.6 + 0.35 * cells[1])
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax, (title, table) in zip(axes.flat, panels):
        values = table.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        im = ax.imshow(values, cmap="viridis", aspect="auto")
        ax.set_xticks(range(table.shape[1]), [label(v) for v in table.columns], rotation=30, ha="right")
        ax.set_yticks(range(table.shape[0]), [label(v) for v in table.index])
        ax.set_xlabel(cols)
        ax.set_ylabel(rows)
        ax.set_title(title, fontsize=8)
        for (i, j), value in pd.DataFrame(values).stack().items():
            ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7, color="white")
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bars(counts: dict[str, int], title: str, path: Path) -> None:
    """A bar per label, its count written on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(counts), 2.6))
    drawn = ax.bar(list(counts), list(counts.values()), color="#4c72b0")
    ax.bar_label(drawn, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("images")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
