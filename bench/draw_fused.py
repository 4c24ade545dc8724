"""Benchmark: images/s of `stylemix draw` with the styles fused into the weights (`--fuse`) against
the same styles as active adapters, same prompts, seeds and settings, same run. Needs the trained
demo (`make repro`).

    python bench/draw_fused.py          # writes bench/results/draw_fused.json
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stylemix import params  # noqa: E402
from stylemix.drawing.drawer import Drawer, adapters  # noqa: E402
from stylemix.gpu import default_device  # noqa: E402

OUT = Path(__file__).parent / "results" / "draw_fused.json"


def main() -> None:
    p = params.load("base", "styles", "generate")
    styles = [s for s in p.styles if s in adapters()][:2]
    if len(styles) < 2:
        sys.exit("error: run `make repro` first: two trained styles are needed")
    weights = {styles[0]: 0.6, styles[1]: 0.4}
    jobs = [(prompt, seed) for prompt in p.generate.prompts for seed in p.generate.seeds]
    seconds = {}
    for mode in ("adapters", "fused"):
        drawer = Drawer(p.base)
        if mode == "fused":
            drawer.fuse(weights)
        drawer.draw(jobs[0][0], weights, 0, p.generate)  # warm-up: first-call allocations
        start = time.perf_counter()
        for prompt, seed in jobs:
            drawer.draw(prompt, weights, seed, p.generate)
        seconds[mode] = time.perf_counter() - start
    report = {"setup": {"base_model": p.base.model, "resolution": p.base.resolution, "weights": weights,
                        "images": len(jobs), "steps": p.generate.steps, "device": str(default_device())},
              "seconds": seconds, "images_per_s": {m: len(jobs) / s for m, s in seconds.items()},
              "ratio_fused_over_adapters": seconds["adapters"] / seconds["fused"]}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
