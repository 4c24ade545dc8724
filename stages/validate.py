"""validate: the cross-style matrix, the evidence that each LoRA learned *its* style. The base model
and every style's LoRA on every style's held-out images (never trained on), scored by the denoising
loss at fixed timesteps with fixed noise (stylemix.training.validation): in a style's column, its own LoRA
should be lowest, and below the base."""
import io

import numpy as np
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from stylemix import gpu, params
from stylemix.adapters.loading import load_adapter, read_info_for
from stylemix.adapters.tokens import load_tokens, unload_tokens
from stylemix.data.conditioning import text_encoders, tokenize
from stylemix.errors import StyleMixError, run_stage
from stylemix.families import denoiser, is_flow
from stylemix.models.base_model import load_pipeline
from stylemix.outputs import atomic_write, write_json
from stylemix.paths import LATENTS, LORAS, VALIDATION, VALIDATION_PLOT
from stylemix.progress import progress
from stylemix.training.validation import heldout_loss, load_heldout


def loss_matrix(pipe, styles: list[str], cfg: params.Validation, latents=LATENTS, loras=LORAS) -> dict:
    """{model: {style: {"t<timestep>": loss, ..., "mean": ...}}} for the base and each style's LoRA on
    each style that holds images out. Captions are tokenized by each model's own tokenizer, so a
    style's new tokens mean something only to the LoRA that trained them."""
    held = {s: h for s in styles if (h := load_heldout(s, latents)) is not None}
    if not held:
        raise StyleMixError("no style holds images out (validation.split = 0): nothing to validate; set validation.split")
    groups = {style: cache.groups() for style, cache in held.items()}
    flow = is_flow(pipe)  # FLUX.1 / SD 3.5: no text encoder is trained, so the cached text serves every model
    noise_scheduler = (FlowMatchEulerDiscreteScheduler if flow else DDPMScheduler).from_config(pipe.scheduler.config)
    encoders = None if flow else text_encoders(pipe)
    rows = {}
    with progress() as bar:
        task = bar.add_task("validate", total=(1 + len(styles)) * len(held))
        for model in ["base", *styles]:
            folder = None if model == "base" else loras / model
            tokens = list(read_info_for(folder, pipe).get("tokens") or {}) if folder else []
            if folder:
                load_adapter(pipe, folder, model)
                pipe.set_adapters([model])
                load_tokens(pipe, folder, tokens)
            rows[model] = {}
            for style, cache in held.items():
                with_ids = groups[style] if flow else [group | tokenize(pipe, captions, cache.max_token_length)
                                                       for group, captions in zip(groups[style], cache.group_captions())]
                rows[model][style] = heldout_loss(denoiser(pipe), noise_scheduler, with_ids, cfg.timesteps, cfg.seed, encoders)
                bar.advance(task)
            if folder:
                pipe.delete_adapters(model)
                unload_tokens(pipe, tokens)
    return rows


def summarize(rows: dict, cfg: params.Validation) -> dict:
    """The metrics: mean loss per (model, style), per timestep too; per style whether its own LoRA is
    the best model on it and how far below the base it is."""
    styles = list(rows["base"])
    best = {s: min((m for m in rows if m != "base"), key=lambda m: rows[m][s]["mean"]) for s in styles}
    return {
        "timesteps": cfg.timesteps,
        "loss": {m: {s: r[s]["mean"] for s in styles} for m, r in rows.items()},
        "own_style_best": {s: best[s] == s for s in styles},
        "own_gain_over_base": {s: rows["base"][s]["mean"] - rows[s][s]["mean"] for s in styles},
        "by_timestep": {m: {s: {t: v for t, v in r[s].items() if t != "mean"} for s in styles} for m, r in rows.items()},
    }


def heatmap(metrics: dict, path) -> None:
    """Loss of each model (rows) on each style's held-out images (columns), colored by its change from
    the base in that column; each column's best model is framed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    models, styles = list(metrics["loss"]), list(metrics["loss"]["base"])
    loss = np.array([[metrics["loss"][m][s] for s in styles] for m in models])
    change = loss / loss[0] - 1  # relative to the base row
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(styles), 1.0 + 0.5 * len(models)))
    limit = max(abs(change).max(), 1e-6)
    im = ax.imshow(change, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for i in range(len(models)):
        for j in range(len(styles)):
            ax.text(j, i, f"{loss[i, j]:.4f}\n{change[i, j]:+.1%}", ha="center", va="center", fontsize=7)
    for j in range(len(styles)):
        i = int(loss[1:, j].argmin()) + 1 if len(models) > 1 else 0
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    ax.set_xticks(range(len(styles)), [f"{s}\nheld-out" for s in styles], fontsize=8)
    ax.set_yticks(range(len(models)), [m if m == "base" else f"{m} LoRA" for m in models], fontsize=8)
    ax.set_title("held-out denoising loss (change from base); framed: best LoRA per column", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, format=matplotlib.ticker.PercentFormatter(1.0))
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, png.getvalue())


def main() -> None:
    p = params.load("base", "styles", "validation")
    pipe = load_pipeline(p.base).to(gpu.default_device())
    pipe.set_progress_bar_config(disable=True)
    metrics = summarize(loss_matrix(pipe, list(p.styles), p.validation), p.validation)
    write_json(VALIDATION, metrics)
    heatmap(metrics, VALIDATION_PLOT)
    won = [s for s, ok in metrics["own_style_best"].items() if ok]
    print(f"validate: own LoRA best on {len(won)} of {len(metrics['own_style_best'])} styles -> {VALIDATION}, {VALIDATION_PLOT}")


if __name__ == "__main__":
    run_stage(main)
