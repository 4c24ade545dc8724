"""Benchmark: what each stage process pays for its imports before it does any work.

    python bench/imports.py            # writes bench/results/imports.json

For every stage in dvc.yaml, `python -X importtime -c "import stages.<name>"` in a fresh process
(plus the modules the stage imports inside its functions when it runs the demo, RUN_TIME), best of ROUNDS; the baseline, measured in the same run, is a bare `import torch`. Each module's own
(self) time is added to its top-level package, so the shares say whose import it is: torch's, the
libraries' (diffusers, transformers, peft, open_clip, ...) or ours (stages, stylemix). Per stage the
JSON has the total in seconds, its ratio to torch's, and the seconds per package; `pipeline_s` adds the
stages up as a fresh `dvc repro` of the demo starts them (per-style stages once per style).
"""
import json
import platform
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "imports.json"
ROUNDS = 3
# What a stage imports only when it runs (function-level imports), on the demo's params.
RUN_TIME = {"base": ["open_clip.tokenizer"], "train": ["dvclive"], "validate": ["matplotlib.pyplot"],
            "score": ["open_clip", "matplotlib.pyplot"], "report": ["matplotlib.pyplot"]}
STAGES = ["sample", "base", "filter", "caption", "encode", "train", "validate", "merge", "generate", "score", "report"]


def import_times(statement: str) -> tuple[float, Counter]:
    """Seconds of one fresh interpreter's imports for `statement`, and the seconds per top-level package."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True).stderr
    per_package: Counter = Counter()
    for line in err.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        per_package[name.strip().split(".")[0]] += int(own) / 1e6
    return sum(per_package.values()), per_package


def best(statement: str) -> dict:
    total, packages = min((import_times(statement) for _ in range(ROUNDS)), key=lambda run: run[0])
    top = {name: round(s, 3) for name, s in packages.most_common() if s >= 0.05}
    return {"s": round(total, 3), "packages": top}


def main() -> None:
    baseline = best("import torch")
    stages = {name: best("; ".join(f"import {m}" for m in [f"stages.{name}", *RUN_TIME.get(name, [])])) for name in STAGES}
    for result in stages.values():
        result["ratio_to_torch"] = round(result["s"] / baseline["s"], 2)
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    count = {"filter": len(p["styles"]), "caption": len(p["styles"]), "encode": len(p["styles"]), "train": len(p["styles"]),
             "merge": len(p["merge"]["combos"]), "generate": 1 + len(p["styles"]) + len(p["merge"]["combos"])}
    pipeline = sum(stages[name]["s"] * count.get(name, 1) for name in STAGES)
    result = {"machine": f"{platform.machine()}, {platform.python_version()}", "rounds": ROUNDS,
              "baseline_import_torch": baseline, "stages": stages, "processes": sum(count.get(n, 1) for n in STAGES),
              "pipeline_s": round(pipeline, 1)}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in stages.items():
        print(f"{name:10s} {r['s']:6.2f} s  ({r['ratio_to_torch']:.2f}x torch)  " + ", ".join(f"{k} {v:.2f}" for k, v in list(r["packages"].items())[:5]))
    print(f"a fresh dvc repro's {result['processes']} stage processes: {pipeline:.0f} s of imports; written to {OUT}")


if __name__ == "__main__":
    main()
