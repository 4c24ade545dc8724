"""End to end with LyCORIS's adapters: the reduced demo trains LoHa (with its LoCon convolutions)
through every stage, then `dvc exp run -S lora.type=lokr` retrains and merges it as LoKr, in a temporary
git repo of its own (so it runs beside tests/test_pipeline.py under `make test`)."""
import json

import pytest
from safetensors import safe_open

from tests.e2e import EVERY_STAGE, STYLES, commit, make_repo, ran, reduce, sh

FIRST = {"loha": "hada_w1_a", "lokr": "lokr_w1"}  # a tensor every layer of that type has


def loha(raw: dict) -> None:
    reduce(raw)
    raw["lora"]["type"] = "loha"


def check_files(repo, kind: str) -> None:
    """Each style's files are that type in both layouts; merges of them are plain LoRAs."""
    for style in STYLES:
        folder = repo / "models/lora" / style
        info = json.loads(safe_open(folder / "pytorch_lora_weights.safetensors", "pt").metadata()["stylemix"])
        kohya = safe_open(folder / f"{style}_kohya.safetensors", "pt")
        assert info["type"] == kind and json.loads(kohya.metadata()["ss_network_args"])["algo"] == kind
        assert any(k.endswith(FIRST[kind]) for k in kohya.keys()) and not any("lora_down" in k for k in kohya.keys())
        assert any("resnets_0_conv1" in k for k in kohya.keys())  # the reduced demo's LoCon convolutions
        assert f"| {kind} |" in (folder / "README.md").read_text()
    for combo in ("mix", "mix2"):
        merged = repo / "models/merged" / combo / "pytorch_lora_weights.safetensors"
        assert json.loads(safe_open(merged, "pt").metadata()["stylemix"])["method"] == "svd"  # not low-rank: linear is svd


def test_loha_runs_the_demo_end_to_end_then_lokr_trains_and_merges(tmp_path):
    """LoHa through every stage; then LoKr (whose drawing, merging and loading the unit tests cover per
    layer) through an experiment of the stages its files come from, train@S and merge@C."""
    repo = make_repo(tmp_path / "repo", loha)
    assert ran(sh(repo, "dvc", "repro").stdout) == EVERY_STAGE
    check_files(repo, "loha")
    validation = json.loads((repo / "reports/validation.json").read_text())
    assert list(validation["loss"]) == ["base", *STYLES]
    metrics = json.loads((repo / "reports/metrics.json").read_text())["models"]
    assert list(metrics) == ["base", *STYLES, "mix", "mix2"]
    for style in STYLES:  # a LyCORIS style draws something other than the base
        assert metrics[style]["style_similarity"][style]["mean"] != pytest.approx(metrics["base"]["style_similarity"][style]["mean"])
    commit(repo, "loha")
    log = sh(repo, "dvc", "exp", "run", "-S", "lora.type=lokr", "merge@mix", "merge@mix2").stdout
    assert ran(log) == {f"train@{s}" for s in STYLES} | {"merge@mix", "merge@mix2"}  # nothing upstream, nothing drawn
    check_files(repo, "lokr")
