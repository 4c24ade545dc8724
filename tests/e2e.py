"""Helpers of the end-to-end tests: a fresh clone of this checkout in a temporary git repo, and
commands run in it, each with a timeout; the reduced demo the e2e tests share."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT
from tests.readme import block

ENV = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": "",
                    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
TIMEOUT = 900  # s for one command of the reduced demo (the slowest takes a few minutes): only a hang gets there


def sh(repo: Path, *cmd: str, check: bool = True, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=repo, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def set_params(repo: Path, edit) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    edit(raw)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def make_repo(repo: Path, edit=None) -> Path:
    """A fresh clone of this checkout in a temp git repo, its params changed by `edit` if given."""
    repo.mkdir()
    for name in ("stages", "stylemix", "pyproject.toml", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore",
                 ".dvc/config", ".dvc/.gitignore"):
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, dst)
    if edit:
        set_params(repo, edit)
    commit(repo, "a fresh clone")
    return repo


def commit(repo: Path, message: str) -> None:
    if not (repo / ".git").is_dir():
        sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", message)


def ran(log: str) -> set[str]:
    """The stages a `dvc repro` log says it ran."""
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def reduce(raw: dict) -> None:
    raw["sample"] = {"styles": ["lineart", "openmoji"], "images_per_style": 5, "heldout": ["zebra", "rocket"], "size": 64, "seed": 0}
    raw["styles"] = {k: v for k, v in raw["styles"].items() if k in raw["sample"]["styles"]}
    raw["base"]["resolution"] = 32
    raw["base"]["buckets"]["step"] = 8  # at 32 px: 40x24 and 24x40 hold OpenMoji's 16:9 and 2:3 canvases
    raw["lora"] |= {"conv_rank": 2, "conv_alpha": 1}  # LoCon: convolutions at their own rank and alpha, through every stage
    raw["train"] |= {"max_steps": 4, "batch_size": 2, "checkpoint_every": 2, "validation_steps": 2, "validation_prompts": ["zebra"]}
    raw["merge"]["combos"] = {"mix": {"weights": {"openmoji": 0.5, "lineart": 0.5}},
                              "mix2": {"weights": {"openmoji": 0.7, "lineart": 0.3}, "method": "svd", "rank": 4,  # and drawn live:
                                       "blocks": {"lineart": {"up": 0.5}}, "schedule": {"openmoji": {"start": 0, "end": 0.5}}}}
    raw["generate"] |= {"prompts": ["zebra"], "seeds": [0, 1], "steps": 2}  # a held-out subject: the ground truth judges it
    raw["merge"]["explore"] = {"prompts": ["zebra"], "bleed_prompts": ["rocket"], "seeds": [0],
                               "content_kept": 0.5, "pairs": {
                                   "ws": {"styles": ["openmoji", "lineart"], "weights": [0, 1],  # live, on a schedule
                                          "schedule": {"openmoji": {"start": 0, "end": 0.5}}},
                                   "ws2": {"styles": ["lineart", "openmoji"], "weights": [0, 0.5], "methods": ["linear", "svd"],
                                           "rank": 4, "blocks": {"lineart": {"up": 0.5}}}}}  # and merged per point


STYLES = ("lineart", "openmoji")  # in params.yaml's order; lineart: the framed style, with new concept tokens
EVERY_STAGE = ({"sample", "base", "prior", "validate", "generate_base", "score", "report"}
               | {f"{stage}@{s}" for stage in ("filter", "caption", "encode", "train", "generate_style") for s in STYLES}
               | {f"{stage}@{c}" for stage in ("merge", "generate_combo") for c in ("mix", "mix2")}
               | {"explore@ws", "explore@ws2"})


def run_block(cwd: Path, name: str, replace: dict[str, str] | None = None, **env: str) -> str:
    """Run a README block as one bash script; returns its output."""
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block(name, replace)], cwd=cwd, env=ENV | env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode:
        raise AssertionError(f"README block {name!r} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr
