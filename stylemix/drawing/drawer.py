"""Drawing on demand, outside the pipeline: one base pipeline loaded once, every trained style and
combination as an adapter switched by weight. What `stylemix draw` and `stylemix ui` share.

It only reads what the pipeline wrote (models/lora, models/merged): a LoRA retrained while it runs
is reloaded on its next use, a deleted one is refused with a message. Every image is a PNG with
its settings twice: A1111's `parameters` text (from render) and a `stylemix` recipe (adapters,
weights, base model, commit) that `settings_from_png` reads back.
"""
import json
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from more_itertools import chunked
from peft.tuners.lycoris_utils import LycorisLayer
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from stylemix import gpu, params
from stylemix.adapters import block_weights
from stylemix.adapters.loading import folder_type, load_adapter, load_order, read_info_for, weights_file
from stylemix.adapters.lora_files import LYCORIS_CONFIGS, WEIGHTS
from stylemix.adapters.schedules import Mix
from stylemix.adapters.schedules import dump as dump_schedules
from stylemix.adapters.tokens import load_tokens, unload_tokens
from stylemix.data.prompts import triggered
from stylemix.drawing.render import render, use_sampler
from stylemix.errors import StyleMixError
from stylemix.families import denoiser
from stylemix.models.base_model import load_pipeline
from stylemix.paths import LORAS, MERGED

WEIGHT_RANGE = (-1.0, 2.0)  # A1111's sliders allow negative weights (a style subtracted) and some overdrive


class Cancelled(StyleMixError):
    """The person pressed Cancel: the image is dropped, nothing is written."""


def adapters(roots: tuple[Path, ...] = (LORAS, MERGED)) -> dict[str, Path]:
    """Every trained style, then every merged combination, by name: what is on disk now."""
    found = {}
    for root in roots:
        for folder in sorted(root.glob("*/")):
            if (folder / WEIGHTS).is_file() and folder.name not in found:
                found[folder.name] = folder
    return found


def find_adapter(name: str) -> Path:
    """The folder of the trained style or merged combination `name`, or a one-line error listing them."""
    found = adapters()
    if name not in found:
        raise StyleMixError(f"no trained style or merged combination named {name!r}; there are: {', '.join(found) or 'none'}")
    return found[name]


def mix_label(weights: dict[str, float]) -> str:
    """`openmoji=0.6 + flat=0.4` for the styles that are on, or `base`."""
    return " + ".join(f"{n}={w:g}" for n, w in weights.items() if w) or "base"


def commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


class Drawer:
    """The loaded pipeline. One drawing at a time (a lock); `cancel()` stops the one running at its
    next denoising step."""

    def __init__(self, base: params.Base, roots: tuple[Path, ...] = (LORAS, MERGED)):
        self.base, self.roots = base, roots  # where the adapters are found, by folder name
        self.pipe = load_pipeline(base).to(gpu.default_device())
        self.pipe.set_progress_bar_config(disable=True)
        self.loaded: dict[str, float] = {}  # adapter name -> its file's mtime when loaded
        self.tokens: dict[str, tuple] = {}  # adapter name -> (folder, mtime, its new tokens) loaded in the tokenizer
        self.fused: dict[str, float] | None = None  # the weights baked into the model by fuse()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.commit = commit()

    def infos(self, names: list[str], load: bool = True) -> dict[str, dict]:
        """Load (or reload, when retrained) each named adapter; its stylemix facts by name."""
        on_disk, out = adapters(self.roots), {}
        for name in names:
            if name not in on_disk:
                if name in self.loaded:
                    self.pipe.delete_adapters(name)
                    del self.loaded[name]
                raise StyleMixError(f"no trained style or merged combination named {name!r} in {LORAS}/ or {MERGED}/ "
                                    f"(deleted while running?): refresh the list, or `dvc repro` it")
            folder = on_disk[name]
            mtime = weights_file(folder).stat().st_mtime
            if self.loaded.get(name) not in (None, mtime):
                self.pipe.delete_adapters(name)
                del self.loaded[name]
            out[name] = read_info_for(folder, self.pipe) | {"folder": str(folder), "mtime": mtime}
        todo = {name: on_disk[name] for name in names if load and name not in self.loaded}
        if any(folder_type(folder) not in LYCORIS_CONFIGS for folder in todo.values()) and self.make_room_for_lora():
            todo = {name: on_disk[name] for name in names}  # reloaded in order
        for name in load_order(todo):
            load_adapter(self.pipe, todo[name], name)
            self.loaded[name] = out[name]["mtime"]
        return out

    def use_tokens(self, infos: dict[str, dict]) -> None:
        """Have exactly these adapters' new tokens in the tokenizer. Loading and unloading rebuild the
        tokenizer (most of a tiny model's drawing time), so only what changed is done."""
        wanted = {name: (info["folder"], info["mtime"], list(info.get("tokens") or {})) for name, info in infos.items()}
        for name in [n for n, loaded in self.tokens.items() if wanted.get(n) != loaded]:
            unload_tokens(self.pipe, self.tokens.pop(name)[2])
        for name, (folder, mtime, tokens) in wanted.items():
            if name not in self.tokens:
                self.tokens[name] = (folder, mtime, [])  # what is loaded so far, should the next one fail
                for token in tokens:
                    load_tokens(self.pipe, Path(folder), [token])
                    self.tokens[name][2].append(token)

    def make_room_for_lora(self) -> bool:
        """peft puts a LoHa or LoKr over a LoRA's layers but cannot put a LoRA over theirs (nor over
        what is left of them once deleted): with any in the model, take every adapter layer out (each
        adapter is loaded again when next drawn). Returns whether it did."""
        if not any(isinstance(m, LycorisLayer) for m in denoiser(self.pipe).modules()):
            return False
        self.pipe.unload_lora_weights()
        self.loaded.clear()
        return True

    def forget(self, name: str) -> None:
        """Drop a loaded adapter (one made for a single drawing, like a mix the explorer merged)."""
        if self.loaded.pop(name, None) is not None:
            self.pipe.delete_adapters(name)
        if name in self.tokens:
            unload_tokens(self.pipe, self.tokens.pop(name)[2])

    def cancel(self) -> None:
        self.stop.set()

    def multipliers(self, blocks: dict | None, active: dict[str, float]) -> dict[str, dict[str, float]]:
        """Each named adapter's block multipliers (stylemix.adapters.block_weights) on this pipeline's UNet."""
        if unknown := sorted(set(blocks or {}) - set(active)):
            raise StyleMixError(f"block weights for {', '.join(unknown)}, which is not drawn: give it a weight too")
        return block_weights.resolve(blocks or {}, denoiser(self.pipe).config, "blocks of {name}")

    def fuse(self, weights: dict[str, float], blocks: dict | None = None) -> None:
        """Bake the adapters at `weights` (and `blocks`) into the model's weights once (diffusers'
        fuse_lora) and drop the adapter layers: every later drawing costs what the base model's does.
        draw() then takes exactly these weights."""
        active = {n: w for n, w in weights.items() if w}
        with self.lock:
            self.infos(list(active))
            if active:
                Mix(active, self.multipliers(blocks, active)).apply(self.pipe)
                self.pipe.fuse_lora(adapter_names=list(active))
                self.pipe.unload_lora_weights()
            self.loaded.clear()
            self.fused = active

    def draw(self, prompt: str, weights: dict[str, float], seed: int, cfg: params.Generate, size: int | None = None,
             on_step: Callable[[int, int], None] | None = None, blocks: dict | None = None,
             schedules: dict[str, params.Schedule] | None = None, triggers: list[str] | None = None) -> tuple[Image.Image, object]:
        """One image of `prompt` and its PNG metadata: draw_batch of one."""
        return self.draw_batch([prompt], weights, [seed], cfg, size, on_step, blocks, schedules, triggers)[0]

    def draw_batch(self, prompts: list[str], weights: dict[str, float], seeds: list[int], cfg: params.Generate,
                   size: int | None = None, on_step: Callable[[int, int], None] | None = None, blocks: dict | None = None,
                   schedules: dict[str, params.Schedule] | None = None,
                   triggers: list[str] | None = None) -> list[tuple[Image.Image, object]]:
        """Each prompt with its seed, `cfg.batch_size` at a time, with the adapters at `weights` (0 = off),
        each optionally with block weights (a block spec by name) and a strength schedule; an image and
        its PNG metadata each. The prompts get the trigger words of `triggers` (adapter names; default:
        those drawn; the explorer's bleed prompts: none)."""
        if not all(prompt.strip() for prompt in prompts):
            raise StyleMixError("the prompt is empty: write what to draw, e.g. 'a tabby cat with green eyes'")
        low, high = WEIGHT_RANGE
        if bad := {n: w for n, w in weights.items() if not low <= w <= high}:
            raise StyleMixError(f"weights {bad} out of range: use {low:g} to {high:g}")
        active = {n: w for n, w in weights.items() if w}
        if self.fused is not None and (active != self.fused or blocks or schedules):
            raise StyleMixError(f"{self.fused or 'no style'} is fused into this model: draw with exactly those weights "
                                f"(no block weights or schedules)")
        if unknown := sorted(set(schedules or {}) - set(active)):
            raise StyleMixError(f"a schedule for {', '.join(unknown)}, which is not drawn: give it a weight too")
        base = self.base.model_copy(update={"resolution": size or self.base.resolution})
        drawn = []
        with self.lock:
            self.stop.clear()
            triggers = list(active) if triggers is None else triggers
            infos = self.infos(list(dict.fromkeys([*active, *triggers])), load=self.fused is None)
            mix = Mix(active, self.multipliers(blocks, active), schedules)
            live = bool(active) and self.fused is None
            if live:
                self.pipe.enable_lora()
            elif self.loaded:
                self.pipe.disable_lora()
            self.use_tokens(infos)
            words = {}
            for name in triggers:
                words |= infos[name].get("triggers") or {name: infos[name]["trigger"]}
            label, step = mix_label(active), self._step(cfg.steps, on_step)
            use_sampler(self.pipe, cfg.scheduler)
            for batch in chunked(list(zip(prompts, seeds, strict=True)), cfg.batch_size):
                texts = [triggered(prompt, {"triggers": words}) if words else prompt for prompt, _ in batch]
                callback = mix.apply(self.pipe, step) if live else step  # each batch from its schedules' first step
                drawn += render(self.pipe, texts, [seed for _, seed in batch], cfg, base, label, [p for p, _ in batch], callback)
        for (prompt, seed), (_, meta) in zip(zip(prompts, seeds), drawn):
            meta.add_text("stylemix", json.dumps({
                "prompt": prompt, "negative_prompt": cfg.negative_prompt, "seed": seed, "steps": cfg.steps,
                "guidance_scale": cfg.guidance_scale, "scheduler": cfg.scheduler, "size": base.resolution,
                "adapters": active, "fused": self.fused is not None, "base_model": base.model, "commit": self.commit}
                | ({"blocks": mix.blocks} if mix.blocks else {})
                | ({"schedules": dump_schedules(mix.schedules)} if mix.schedules else {})))
        return drawn

    def _step(self, total: int, on_step):
        def callback(pipe, step, timestep, kwargs):
            if self.stop.is_set():
                raise Cancelled("cancelled")
            if on_step:
                on_step(step + 1, total)
            return kwargs
        return callback


def _numbers(text: str) -> list[float] | None:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        return None


def parse_spec(option: str, spec: str, kind) -> tuple[str, object]:
    """NAME=SPEC of a LoRA's block weights (kind params.BlockSpec) or schedule (params.Schedule), as
    `stylemix draw --blocks / --schedule` and the UI take them, validated as params validates them;
    `option` names the field in errors."""
    name, _, text = spec.partition("=")
    schedule = kind is params.Schedule
    if not name or not text:
        raise StyleMixError(f"{option} {spec!r}: write NAME=SPEC, e.g. {'lineart=0-0.6' if schedule else 'lineart=OUTALL'}")
    if schedule and "-" in text and ":" not in text:
        start, _, end = text.partition("-")
        value = {"start": start, "end": end}
    elif ":" in text:
        pairs = [part.split(":", 1) for part in text.split(",")]
        value = [[a, b] for a, b in pairs] if schedule else dict(pairs)
    else:
        value = numbers if (numbers := _numbers(text)) is not None else text
    try:
        return name, TypeAdapter(kind).validate_python(value)
    except (ValidationError, ValueError) as err:
        message = err.errors()[0]["msg"].removeprefix("Value error, ") if isinstance(err, ValidationError) else str(err)
        raise StyleMixError(f"{option} {spec!r}: {message}") from None


A1111_LORA = re.compile(r"<lora:([^:>]+):([-0-9.]+)>")


def settings_from_png(path: Path | str) -> dict:
    """The settings a PNG was drawn with: our recipe, else A1111's `parameters` text (its
    `<lora:name:weight>` tags become weights)."""
    name = Path(path).name
    try:
        with Image.open(path) as image:  # a decompression bomb is refused here, from its header
            if image.format != "PNG":
                raise StyleMixError(f"{name}: not a PNG image (a {image.format} file)")
            text = image.text
    except Image.DecompressionBombError as err:
        raise StyleMixError(f"{name}: too many pixels for a drawing ({err})") from None
    except (OSError, SyntaxError) as err:
        raise StyleMixError(f"{name}: not a PNG image ({err})") from None
    if "stylemix" in text:
        return json.loads(text["stylemix"])
    if "parameters" not in text:
        raise StyleMixError(f"{Path(path).name}: carries no drawing settings (no `stylemix` or `parameters` text)")
    lines = text["parameters"].strip().split("\n")
    fields = dict(re.findall(r"\s*([\w ]+): ([^,]+)", lines[-1]))
    negative = next((line.removeprefix("Negative prompt: ") for line in lines if line.startswith("Negative prompt: ")), "")
    prompt = "\n".join(line for line in lines[:-1] if not line.startswith("Negative prompt: "))
    width = fields.get("Size", "").split("x")[0]
    return {"prompt": A1111_LORA.sub("", prompt).strip(" ,"), "negative_prompt": negative,
            "seed": int(fields.get("Seed", 0)), "steps": int(fields.get("Steps", 25)),
            "guidance_scale": float(fields.get("CFG scale", 7.5)), "size": int(width) if width.isdigit() else None,
            "adapters": {n: float(w) for n, w in A1111_LORA.findall(prompt)}}
