"""Benchmark: images/s for the whole comparison set (base, every style, every combination of
params.yaml), drawn with one pipeline load and adapter switching, against loading the pipeline
again for every model (what one DVC stage per model does), and generate.batch_size images at once
against one at a time. Same run, same settings. Needs the trained demo (`make repro`).

    python bench/generate.py            # writes bench/results/generate.json
"""
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stages.generate import generate_model, lora_folder  # noqa: E402
from stylemix import params  # noqa: E402
from stylemix.gpu import default_device  # noqa: E402
from stylemix.models.base_model import load_pipeline  # noqa: E402

OUT = Path(__file__).parent / "results" / "generate.json"


def main() -> None:
    p = params.load("base", "styles", "merge", "generate")
    models = [("base", "base")] + [("style", s) for s in p.styles] + [("combo", c) for c in p.merge.combos]
    missing = [str(lora_folder(k, n)) for k, n in models if k != "base" and not lora_folder(k, n).is_dir()]
    if missing:
        sys.exit(f"error: run `make repro` first; missing {', '.join(missing)}")
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))

    def load():
        pipe = load_pipeline(p.base).to(default_device())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def draw(pipe, kind, name, run, cfg=p.generate):
        (work / run / name).mkdir(parents=True)
        return generate_model(pipe, name, lora_folder(kind, name), cfg, p.base, work / run / name)

    start = time.perf_counter()
    pipe = load()
    images = sum(draw(pipe, kind, name, "switching") for kind, name in models)
    switching = time.perf_counter() - start
    start = time.perf_counter()
    images_reload = sum(draw(load(), kind, name, "reloading") for kind, name in models)
    reloading = time.perf_counter() - start
    one = p.generate.model_copy(update={"batch_size": 1})
    start = time.perf_counter()
    images_one = sum(draw(pipe, kind, name, "one_at_a_time", one) for kind, name in models)
    one_at_a_time = time.perf_counter() - start
    report = {
        "setup": {"base_model": p.base.model, "resolution": p.base.resolution, "models": len(models),
                  "images": images, "steps": p.generate.steps, "batch_size": p.generate.batch_size,
                  "device": str(default_device())},
        "images_per_s": {"one_load_adapter_switching": images / switching, "reload_per_model": images_reload / reloading,
                         "one_image_at_a_time": images_one / one_at_a_time},
        "seconds": {"one_load_adapter_switching": switching, "reload_per_model": reloading,
                    "one_image_at_a_time": one_at_a_time},
        "ratio_switching_over_reload": (images / switching) / (images_reload / reloading),
        "ratio_batched_over_one_at_a_time": (images / switching) / (images_one / one_at_a_time),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
