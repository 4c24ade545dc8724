"""Helpers of the end-to-end tests: a fresh clone of this checkout in a temporary git repo, and
commands run in it, each with a timeout."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

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
