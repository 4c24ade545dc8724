"""A local web UI over what the pipeline trained: Draw, Grid (X/Y plot), Compare, Save mix.

    stylemix ui                     # http://127.0.0.1:7860 (--port, --host)

It reads models/base, models/lora, models/merged, reports/ and params.yaml, and never runs a stage,
so it works while `dvc repro` runs elsewhere (Refresh picks up new LoRAs). Offline: no analytics,
no share link, no font or script from another host. Drawings go to reports/ui/ as PNGs with their
settings (A1111 `parameters` and a stylemix recipe); "Load settings" reads them back.
"""
import argparse
import json
import os
import threading
import traceback
from datetime import datetime
from functools import wraps
from io import BytesIO

# Offline before any library reads its settings (the hub client reads them at import): the UI only
# draws with what `dvc repro` already fetched. gradio's analytics off before gradio is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from stylemix import params  # noqa: E402
from stylemix.adapters.schedules import dump as dump_schedules  # noqa: E402
from stylemix.commands.ui_tables import experiments_table, metrics_table, tokens_of  # noqa: E402
from stylemix.drawing.drawer import WEIGHT_RANGE, Cancelled, Drawer, adapters, mix_label, parse_spec, settings_from_png  # noqa: E402
from stylemix.drawing.render import SCHEDULERS  # noqa: E402
from stylemix.errors import StyleMixError  # noqa: E402
from stylemix.outputs import atomic_write  # noqa: E402
from stylemix.paths import GRIDS, LORAS, UI_OUT  # noqa: E402

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # --host values only this machine can reach
SLOTS = 16  # weight sliders on the page; styles and combinations beyond this are not offered
MAX_PROMPT = 4_000  # characters: kohya's longest captions (225 tokens) are under 1,500
# Small drawings (the demo's 64 px) fill their frame with their pixels visible, not a thumbnail.
CSS = "#result img, #compare-slider img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only; "
                        "0.0.0.0: every network it is on, with no login)")
    parser.add_argument("--port", type=int, default=7860)


class Studio:
    """What the page's handlers share: the pipeline (loaded on first use, then kept), the scorer, and
    whose drawing runs now (one at a time), so that Cancel in one browser stops only its own."""

    def __init__(self):
        self.drawer: Drawer | None = None
        self.scorer = None
        self.turn, self.owner_lock = threading.Lock(), threading.Lock()
        self.owner: str | None = None  # the session whose drawing runs

    def draw(self, form: dict, weights: dict[str, float], progress=None, owner: str | None = None):
        """One drawing from the form's settings (params.yaml read anew: its defaults may change); the
        block weights and schedules of the styles that are off are left out."""
        for key, label in (("prompt", "prompt"), ("negative", "negative prompt")):
            if len(form[key]) > MAX_PROMPT:
                raise StyleMixError(f"the {label} is {len(form[key]):,} characters; at most {MAX_PROMPT:,} "
                                    f"(the text encoder reads its first 77 tokens)")
        with self.turn:
            with self.owner_lock:
                self.owner = owner
            try:
                return self._draw(form, weights, progress)
            finally:
                with self.owner_lock:
                    self.owner = None

    def cancel(self, owner: str) -> None:
        """Stop the drawing running now if `owner` started it (its queued ones gradio drops)."""
        with self.owner_lock:
            if self.drawer is not None and self.owner == owner:
                self.drawer.cancel()

    def _draw(self, form: dict, weights: dict[str, float], progress=None):
        p = params.load("base", "generate")
        cfg = p.generate.model_copy(update={"negative_prompt": form["negative"], "steps": int(form["steps"]),
                                            "guidance_scale": float(form["guidance"]), "scheduler": form["sampler"]})
        if self.drawer is None:
            self.drawer = Drawer(p.base)
        on_step = None if progress is None else (lambda i, n: progress(i / n, desc=f"step {i}/{n}"))
        blocks, schedules = ({n: v for n, v in specs(form, key).items() if weights.get(n)} for key in ("blocks", "schedule"))
        image, meta = self.drawer.draw(form["prompt"], weights, int(form["seed"]), cfg, int(form["size"]), on_step,
                                       blocks=blocks, schedules=schedules)
        return image, meta

    def clip_score(self, image, prompt: str) -> float:
        from stylemix.evaluation.scoring import embed_images, embed_texts, load_scorer

        if self.scorer is None:
            self.scorer = load_scorer(params.load("score").score)
        return float((embed_images(self.scorer, [image]) * embed_texts(self.scorer, [prompt])).sum())


SPEC_FIELDS = {"blocks": ("Block weights", params.BlockSpec), "schedule": ("Schedules", params.Schedule)}


def specs(form: dict, key: str) -> dict:
    """The form's block weights or schedules: one NAME=SPEC a line, as `stylemix draw --blocks / --schedule`."""
    label, kind = SPEC_FIELDS[key]
    return dict(parse_spec(label, line.strip(), kind) for line in (form.get(key) or "").splitlines() if line.strip())


def as_params(key: str, values: dict) -> dict:
    """Parsed block weights or schedules as params.yaml writes them."""
    if key == "schedule":
        return dump_schedules(values)
    return {n: v.model_dump(exclude_defaults=True) if isinstance(v, params.BlockGroups) else v for n, v in values.items()}


def save_png(image, meta=None, kind: str = "draw") -> str:
    buf = BytesIO()
    image.save(buf, format="png", pnginfo=meta)
    path = UI_OUT / f"{datetime.now():%Y%m%d-%H%M%S-%f}-{kind}.png"
    atomic_write(path, buf.getvalue())
    return str(path)


def friendly(fn):
    """Bad input becomes a message on the page; anything else a one-line message (the traceback
    goes to the terminal, never to the browser); a cancelled drawing, a note."""
    import gradio as gr

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Cancelled:  # its own Cancel: no error, and the page keeps what it shows
            gr.Info("cancelled")
            return gr.skip()
        except StyleMixError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:  # noqa: BLE001 - the page shows one line; the terminal the rest
            traceback.print_exc()
            raise gr.Error(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", print_exception=False) from None
    return wrapper


def build():
    import gradio as gr

    studio = Studio()
    p = params.load("base", "generate")
    g = p.generate
    low, high = WEIGHT_RANGE
    with gr.Blocks(title="stylemix", analytics_enabled=False) as app:
        names = gr.State([])
        gr.Markdown("## stylemix: draw, mix and compare trained styles")
        with gr.Row():
            status = gr.Markdown()
            refresh = gr.Button("Refresh", size="sm", scale=0)
        with gr.Tabs():
            with gr.Tab("Draw", id="draw"):
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(label="Prompt", value=g.prompts[0], lines=2)
                        negative = gr.Textbox(label="Negative prompt", value=g.negative_prompt)
                        with gr.Row():
                            token = gr.Dropdown(label="New tokens", choices=[], scale=3)
                            insert = gr.Button("Insert token", size="sm", scale=1)
                        with gr.Row():
                            seed = gr.Number(label="Seed", value=g.seeds[0], precision=0)
                            random_seed = gr.Checkbox(label="Random seed", value=False)
                            steps = gr.Slider(1, 150, value=g.steps, step=1, label="Steps", elem_id="steps")
                        with gr.Row():
                            guidance = gr.Slider(0, 20, value=g.guidance_scale, step=0.5, label="Guidance")
                            size = gr.Slider(64, 1024, value=p.base.resolution, step=8, label="Size (px)", elem_id="size")
                            sampler = gr.Dropdown(list(SCHEDULERS), value=g.scheduler, label="Sampler")
                        rows, checks, sliders = [], [], []
                        with gr.Group():
                            for i in range(SLOTS):  # one checkbox + weight per style / combination (Refresh fills them)
                                with gr.Row(visible=False) as row:
                                    checks.append(gr.Checkbox(label=f"slot {i}", value=False, scale=1, elem_id=f"use-{i}"))
                                    sliders.append(gr.Slider(low, high, value=1.0, step=0.05, label="weight", scale=4, elem_id=f"weight-{i}"))
                                rows.append(row)
                        with gr.Accordion("Block weights and schedules", open=False):
                            blocks = gr.Textbox(label="Block weights: NAME=SPEC, one a line", lines=2, elem_id="blocks",
                                                placeholder="lineart=down:0,mid:0   (groups, an LBW preset OUTALL, or a vector)")
                            schedule = gr.Textbox(label="Schedules: NAME=SPEC, one a line", lines=2, elem_id="schedule",
                                                  placeholder="fluent=0-0.6   (on for the first 60% of the steps; or 0:1,0.8:0 points)")
                        with gr.Row():
                            generate = gr.Button("Generate", variant="primary")
                            cancel = gr.Button("Cancel")
                        load = gr.File(label="Load settings from a PNG", file_types=[".png"], type="filepath", height=110, elem_id="load")
                    with gr.Column(scale=2):
                        image = gr.Image(label="Image", type="filepath", format="png", elem_id="result", height=420)
                        info = gr.Markdown(elem_id="draw-info")
            with gr.Tab("Grid", id="grid"):
                with gr.Row():
                    x_kind = gr.Dropdown(["seed", "prompt"], value="seed", label="X axis")
                    x_values = gr.Textbox(label="X values", value="0, 1")
                    y_kind = gr.Dropdown(["", "seed", "prompt"], value="", label="Y axis")
                    y_values = gr.Textbox(label="Y values", value="")
                plot_button = gr.Button("Draw grid", variant="primary")
                plot_image = gr.Image(label="X/Y plot", type="filepath", format="png", elem_id="grid-image", height=560)
            with gr.Tab("Compare", id="compare"):
                compare_button = gr.Button("Compare base and this mix (the Draw tab's prompt, seed and weights)", variant="primary")
                slider = gr.ImageSlider(label="base | mix", type="filepath", format="png", elem_id="compare-slider")
                report_button = gr.Button("Reload reports and experiments", size="sm")
                gallery = gr.Gallery(label="reports/grids", columns=3, height=360)
                metrics = gr.Dataframe(label="reports/metrics.json", interactive=False)
                exps = gr.Dataframe(label="Experiments (dvc exp show)", interactive=False)
            with gr.Tab("Save mix", id="save"):
                gr.Markdown("The Draw tab's weights, block weights and schedules become `merge.combos.<name>` in params.yaml: "
                            "the next `dvc repro` merges, draws and scores it.")
                mix_name = gr.Textbox(label="Combination name", placeholder="e.g. soft_pixels")
                save_button = gr.Button("Save mix to params.yaml", variant="primary")
                saved = gr.Markdown(elem_id="save-result")

        form_fields = [prompt, negative, seed, random_seed, steps, guidance, size, sampler]
        keys = ["prompt", "negative", "seed", "random_seed", "steps", "guidance", "size", "sampler", "blocks", "schedule"]

        def unpack(values):
            form = dict(zip(keys, values[:len(keys)]))
            current = values[len(keys)]
            slots = values[len(keys) + 1:]
            weights = {n: float(slots[SLOTS + i]) if slots[i] else 0.0 for i, n in enumerate(current)}
            if form["random_seed"]:
                form["seed"] = int.from_bytes(os.urandom(4), "little") % 2**31
            return form, weights

        inputs = form_fields + [blocks, schedule] + [names] + checks + sliders  # "Load settings" fills form_fields only

        @friendly
        def on_refresh():
            on_disk = adapters()
            found = list(on_disk)[:SLOTS]
            shown = [gr.update(visible=i < len(found)) for i in range(SLOTS)]
            boxes = [gr.update(label=found[i]) if i < len(found) else gr.update() for i in range(SLOTS)]
            kinds = ["seed", "prompt"] + [f"weight:{n}" for n in found]
            styles = sum(1 for n in found if on_disk[n].parent == LORAS)
            note = f"{styles} styles, {len(found) - styles} combinations in models/ ({datetime.now():%H:%M:%S})"
            if len(on_disk) > SLOTS:
                note += f"; only the first {SLOTS} are offered"
            return [found, note, gr.update(choices=tokens_of(on_disk)), gr.update(choices=kinds),
                    gr.update(choices=[""] + kinds), *shown, *boxes]

        refresh_outputs = [names, status, token, x_kind, y_kind] + rows + checks
        refresh.click(on_refresh, None, refresh_outputs)
        app.load(on_refresh, None, refresh_outputs)

        # gr.Request and gr.Progress go first: gradio inserts them at their parameters' positions among the inputs.
        @friendly
        def on_generate(request: gr.Request, progress=gr.Progress(), *values):
            form, weights = unpack(values)
            img, meta = studio.draw(form, weights, progress, request.session_hash)
            return save_png(img, meta), f"seed {form['seed']} · {mix_label(weights)}", form["seed"]

        drawing = [generate.click(on_generate, inputs, [image, info, seed], concurrency_id="pipeline", concurrency_limit=1)]
        insert.click(lambda text, tok: f"{tok.split(' ')[0]}, {text}" if tok else text, [prompt, token], prompt)

        @friendly
        def on_load(path, current):
            if not path:
                return [gr.update()] * (len(form_fields) + 2 * SLOTS)
            s = settings_from_png(path)
            unknown = sorted(set(s.get("adapters") or {}) - set(current))
            if unknown:
                gr.Warning(f"this PNG used {', '.join(unknown)}, which is not among the trained styles here")
            adapters_ = s.get("adapters") or {}
            values = [s["prompt"], s.get("negative_prompt", ""), s["seed"], False, s.get("steps", g.steps),
                      s.get("guidance_scale", g.guidance_scale), s.get("size") or p.base.resolution,
                      s.get("scheduler", g.scheduler)]
            boxes = [n in adapters_ for n in current] + [False] * (SLOTS - len(current))
            weights = [adapters_.get(n, 1.0) for n in current] + [1.0] * (SLOTS - len(current))
            return values + boxes + weights

        load.upload(on_load, [load, names], form_fields + checks + sliders)

        @friendly
        def on_grid(request: gr.Request, progress=gr.Progress(), *values):
            from stylemix.drawing.xy_grid import Axis, cells, parse_values, plot

            (xk, xv, yk, yv), (form, weights) = values[:4], unpack(values[4:])
            x, y = Axis(xk or "", parse_values(xk, xv)), Axis(yk or "", parse_values(yk, yv))
            todo = cells(x, y)
            images, scores = [], []
            for k, (_, _, change) in enumerate(todo):
                progress(k / len(todo), desc=f"cell {k + 1}/{len(todo)}")
                cell = form | {key: v for key, v in change.items() if key != "weights"}
                img, _ = studio.draw(cell, weights | change["weights"], owner=request.session_hash)
                images.append(img)
                scores.append(studio.clip_score(img, cell["prompt"]))
            title = f"{form['prompt']} · {mix_label(weights)}"
            return save_png(plot(x, y, images, scores, title), kind="grid")

        drawing.append(plot_button.click(on_grid, [x_kind, x_values, y_kind, y_values] + inputs, plot_image,
                                         concurrency_id="pipeline", concurrency_limit=1))

        @friendly
        def on_compare(request: gr.Request, progress=gr.Progress(), *values):
            form, weights = unpack(values)
            if not any(weights.values()):
                raise StyleMixError("no style is on: tick at least one style or combination in the Draw tab")
            base, _ = studio.draw(form, {}, owner=request.session_hash)
            mix, meta = studio.draw(form, weights, progress, request.session_hash)
            return save_png(base, kind="base"), save_png(mix, meta, kind="mix")

        drawing.append(compare_button.click(on_compare, inputs, slider, concurrency_id="pipeline", concurrency_limit=1))

        def on_cancel(request: gr.Request):
            studio.cancel(request.session_hash)

        cancel.click(on_cancel, None, None, cancels=drawing, concurrency_limit=None)  # this browser's drawings only

        @friendly
        def on_reports():
            grids = sorted(str(f) for f in GRIDS.glob("*.png"))
            return grids, metrics_table(), experiments_table()

        report_button.click(on_reports, None, [gallery, metrics, exps])
        app.load(on_reports, None, [gallery, metrics, exps])

        @friendly
        def on_save(name, *values):
            from stylemix.mixing.mixes import save_mix

            form, weights = unpack(values)
            extra = {key: as_params(key, {n: v for n, v in specs(form, key).items() if weights.get(n)}) for key in SPEC_FIELDS}
            mix = save_mix(name.strip(), weights, extra={k: v for k, v in extra.items() if v})
            lines = "\n".join(f"        {s}: {w:g}" for s, w in mix.items())
            more = "".join(f"\n      {k}: {json.dumps(v)}" for k, v in extra.items() if v)  # JSON: YAML's flow style
            return (f"Saved to params.yaml; `dvc repro` merges it:\n```yaml\nmerge:\n  combos:\n    {name.strip()}:\n"
                    f"      weights:\n{lines}{more}\n```")

        save_button.click(on_save, [mix_name] + inputs, saved)
    return app


def run(args: argparse.Namespace) -> None:
    import gradio as gr

    if args.host not in LOCAL_HOSTS:
        print(f"warning: stylemix ui listens on {args.host}: anyone who can reach this machine on port {args.port} "
              "can draw with your models and save mixes into params.yaml (there is no login)", flush=True)
    app = build()  # reads params.yaml first: a bad one stops here, with one line
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=args.host, server_port=args.port, share=False, prevent_thread_lock=True, quiet=True,
               theme=theme, css=CSS, allowed_paths=[str(UI_OUT.resolve()), str(GRIDS.resolve())], show_error=False)
    print(f"stylemix ui: {app.local_url} (Ctrl+C stops it)", flush=True)
    app.block_thread()
