"""bench/gpu_train.py cannot rot between GPU sessions: its --tiny run (the same code on the CPU) runs
here with only what the GPU machine will have importable, its own packages and the wheels
bench/gpu_wheels.sh carries, so a new import the machine lacks fails here first."""
import json
import re
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

from tests.conftest import ROOT
from tests.e2e import ENV


def names(path) -> set[str]:
    lines = [line.split("==")[0].strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {normalized(n) for n in lines}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def with_requirements(wanted: set[str]) -> set[str]:
    """The packages and, as installed here, everything they require (their versions here may need
    other packages than the GPU machine's versions do: those are there, or they would not import)."""
    installed = {normalized(d.metadata["Name"]): d for d in distributions()}
    found, todo = set(), [n for n in wanted if n in installed]
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            for req in installed[name].requires or []:
                dep = normalized(re.match(r"[A-Za-z0-9_.-]+", req)[0])
                if "extra ==" not in req and dep in installed:
                    todo.append(dep)
    return found


def gpu_machine_site(folder: Path) -> Path:
    """A site folder with only the GPU machine's packages and the carried wheels (links into this venv)."""
    there = with_requirements(names(ROOT / "bench/gpu_machine.txt") | names(ROOT / "bench/gpu_wheels.txt"))
    folder.mkdir()
    for dist in distributions():
        if normalized(dist.metadata["Name"]) in there:
            for top in {Path(f).parts[0] for f in dist.files or []} - {".."}:
                if (source := Path(dist.locate_file(top))).exists() and not (folder / top).exists():
                    (folder / top).symlink_to(source)
    return folder


def test_the_gpu_benchmark_runs_tiny_with_only_what_the_gpu_machine_has(tmp_path):
    site = gpu_machine_site(tmp_path / "site")
    assert (site / "diffusers").exists() and not (site / "dvclive").exists() and not (site / "gradio").exists()
    out = tmp_path / "gpu_train_tiny.json"
    result = subprocess.run(  # -S: none of this venv's site-packages, only the folder above
        [sys.executable, "-S", str(ROOT / "bench/gpu_train.py"), "--tiny", "--warmup", "1", "--steps", "2", "--rounds", "1",
         "--out", str(out)], cwd=tmp_path, env=ENV | {"PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["setup"]["tiny"] and report["setup"]["train_style_logging"].startswith("none")
    for arch, batches in (("sd15", [1, 4]), ("sdxl", [1]), ("flux-dev", [1]), ("sd35-medium", [1])):
        for batch in batches:
            row = report[arch][f"batch_{batch}"]
            flow = ("ours_int8_base",) if arch in ("flux-dev", "sd35-medium") else ()
            for variant in ("floor", "plain_floor", "reference", "ours", "ours_gradient_checkpointing", *flow):
                assert row[variant]["s"] > 0, (arch, batch, variant)
            assert row["ratios"]["ours_over_floor"] > 0 and row["ratios"]["reference_over_ours"] > 0


def test_the_scale_benchmark_runs_on_a_few_images(tmp_path):
    """bench/scale.py's code path (every phase, its own process each) on two small styles."""
    out = tmp_path / "scale.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench/scale.py"), "--images", "24,36", "--out", str(out)],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for size in ("24", "36"):
        phases = report["results"][size]
        assert list(phases) == ["filter", "caption", "encode", "train"]
        assert phases["filter"]["images"] == phases["encode"]["images"] == int(size)
        assert all(row["s_per_image"] > 0 and row["peak_gb"] >= 0 for row in phases.values())
        assert phases["train"]["steps"] >= 2 and phases["train"]["cache_gb"] > 0
    assert set(report["ratios_to_24"]["36"]) == {"filter", "caption", "encode", "train"}
