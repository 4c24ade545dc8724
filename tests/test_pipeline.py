"""End to end: the real dvc.yaml on a reduced demo, in a temporary git repo."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

ENV = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": "",
                    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=repo, env=ENV, capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def set_params(repo: Path, edit) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    edit(raw)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def reduce(raw: dict) -> None:
    raw["sample"] = {"styles": ["watercolor", "pixelart"], "images_per_style": 4, "seed": 0}
    raw["styles"] = {k: v for k, v in raw["styles"].items() if k in raw["sample"]["styles"]}
    raw["base"]["resolution"] = 32
    raw["train"] |= {"max_steps": 4, "checkpoint_every": 2, "validation_steps": 2, "validation_prompts": ["a cat"]}
    raw["merge"]["combos"] = {"mix": {"weights": {"watercolor": 0.5, "pixelart": 0.5}},
                              "mix2": {"weights": {"watercolor": 0.7, "pixelart": 0.3}, "method": "svd", "rank": 4}}
    raw["generate"] |= {"prompts": ["a cat sitting by a window"], "seeds": [0, 1], "steps": 2}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("e2e") / "repo"
    repo.mkdir()
    for name in ("stages", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore"):
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, dst)
    set_params(repo, reduce)
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "a fresh clone")
    return repo


def ran(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


STYLES = ("watercolor", "pixelart")


def test_repro_runs_every_stage_then_nothing(repo):
    first = sh(repo, "dvc", "repro").stdout
    per_style = {f"{stage}@{s}" for stage in ("filter", "caption", "encode", "train", "generate_style") for s in STYLES}
    per_combo = {f"{stage}@{c}" for stage in ("merge", "generate_combo") for c in ("mix", "mix2")}
    assert ran(first) == {"sample", "base", "generate_base", "score", "report"} | per_style | per_combo
    for style in STYLES:
        rows = [json.loads(line) for line in (repo / f"data/captions/{style}/metadata.jsonl").read_text().splitlines()]
        assert len(rows) == 7 and all(r["text"] for r in rows)  # 4 images + gray, rgba, rotated
        summary = json.loads((repo / f"reports/filter/{style}/summary.json").read_text())
        assert summary["kept"] == 7 and summary["rejected"] == 7
        assert (repo / f"data/latents/{style}/latents.safetensors").is_file()
        assert (repo / f"models/lora/{style}/pytorch_lora_weights.safetensors").is_file()
        assert (repo / f"models/lora/{style}/{style}_kohya.safetensors").is_file()
        assert json.loads((repo / f"reports/train/{style}/metrics.json").read_text())["steps"] == 4
    assert json.loads((repo / "models/base/source.json").read_text())["kind"] == "tiny"
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert list(metrics["models"]) == ["base", "watercolor", "pixelart", "mix", "mix2"]
    assert metrics["scorer"]["scorer_pretrained"] is False
    report = (repo / "reports/report.md").read_text()
    assert "not meaningful" in report and "grids/prompt_0.png" in report and "| mix2 |" in report
    assert sorted(p.name for p in (repo / "reports/grids").iterdir()) == ["overview.png", "prompt_0.png"]
    second = sh(repo, "dvc", "repro").stdout
    assert ran(second) == set() and "Data and pipelines are up to date" in second


def test_trigger_change_never_recaptions(repo):
    set_params(repo, lambda raw: raw["styles"]["watercolor"].update(trigger="aquastyle"))
    log = sh(repo, "dvc", "repro").stdout
    # filter re-checks (cheap) and writes the same images, so the caption stage is skipped;
    # the other style is not touched.
    assert ran(log) >= {"filter@watercolor", "encode@watercolor", "train@watercolor", "generate_style@watercolor"}
    assert not ran(log) & {"caption@watercolor", "caption@pixelart", "encode@pixelart", "train@pixelart",
                           "generate_style@pixelart", "generate_base"}
    metrics = sh(repo, "dvc", "metrics", "show", "--json").stdout
    assert "reports/filter/watercolor/summary.json" in metrics and "reports/train/pixelart/metrics.json" in metrics


def test_combo_weight_change_reruns_only_that_combo(repo):
    set_params(repo, lambda raw: raw["merge"]["combos"]["mix"]["weights"].update(watercolor=0.6, pixelart=0.4))
    status = sh(repo, "dvc", "status", "--json").stdout
    # score and report read the list of combinations; generate_combo@mix follows from merge@mix's output.
    assert set(json.loads(status)) == {"merge@mix", "score", "report"}
    assert ran(sh(repo, "dvc", "repro").stdout) == {"merge@mix", "generate_combo@mix", "score", "report"}


def test_exp_run_rank_retrains_only(repo):
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "trained")
    log = sh(repo, "dvc", "exp", "run", "-S", "lora.rank=8").stdout
    assert ran(log) >= {"train@watercolor", "train@pixelart"}
    upstream = {f"{stage}@{s}" for stage in ("filter", "caption", "encode") for s in STYLES} | {"sample", "base"}
    assert not ran(log) & upstream


def test_bad_params_stop_a_stage_with_one_line(repo):
    set_params(repo, lambda raw: raw["filter"].update(laplacian_min=-1))
    result = sh(repo, sys.executable, "-m", "stages.filter", "watercolor", check=False)
    set_params(repo, lambda raw: raw["filter"].update(laplacian_min=100))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: filter.laplacian_min = -1: Input should be greater than or equal to 0"]


def test_unknown_style_is_named(repo):
    result = sh(repo, sys.executable, "-m", "stages.filter", "anime", check=False)
    assert result.returncode == 2 and "unknown style 'anime'" in result.stderr
