"""dvc.lock records what the committed reports were made from: it holds exactly the stages dvc.yaml
defines, and every Python file a stage depends on still hashes as the lock says. Otherwise the
committed reports may be stale and a fresh clone's `dvc repro` reruns stages that should be current."""
import hashlib
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT


def test_the_lock_is_the_pipeline_and_matches_its_code():
    dvc = Path(sys.executable).parent / "dvc"
    listed = subprocess.run([dvc, "stage", "list", "--name-only"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(listed.stdout.split()), "dvc.lock and dvc.yaml name different stages: run `dvc repro`"
    stale = [f"{stage}: {dep['path']}" for stage, entry in lock.items() for dep in entry.get("deps", [])
             if dep["path"].endswith(".py") and hashlib.md5((ROOT / dep["path"]).read_bytes()).hexdigest() != dep["md5"]]
    assert not stale, f"dvc.lock is stale: run `dvc repro` and commit dvc.lock ({', '.join(stale)})"
