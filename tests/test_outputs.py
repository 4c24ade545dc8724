"""Outputs are byte-identical for identical contents, so DVC skips what depends on them; a full disk
leaves the output before it as it was."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import ROOT

SAVE = """
import sys, torch
from stylemix.outputs import save_safetensors
tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(3, dtype=torch.float16)}
save_safetensors(tensors, sys.argv[1], {k: str(i) for i, k in enumerate("qwertyuiopasdfgh")})
"""


def test_safetensors_with_metadata_are_byte_identical_across_processes(tmp_path):
    # safetensors alone writes the 16 metadata keys in a random order per process.
    paths = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", SAVE, str(path)], cwd=ROOT, check=True, timeout=300)
    assert len({p.read_bytes() for p in paths}) == 1
    tensors = load_file(paths[0])
    assert torch.equal(tensors["b"], torch.arange(6.0).reshape(2, 3)) and tensors["a"].dtype == torch.float16
    with safe_open(paths[0], "pt") as f:
        assert f.metadata() == {k: str(i) for i, k in enumerate("qwertyuiopasdfgh")}


def test_a_lora_is_the_same_bytes_in_every_process(tmp_path, tiny_model):
    """peft's target_modules is a set, ordered by each process's string hashes: the same LoRA saved by
    processes with other hash seeds is the same file in both layouts (else every stage after train@S
    would rerun on a fresh clone)."""
    save = ("import sys, pathlib\nfrom tests.test_merge import random_lora\n"
            "folder = pathlib.Path(sys.argv[2]); folder.mkdir()\n"
            "random_lora(pathlib.Path(sys.argv[1]), folder, rank=2, alpha=2, text_encoder=True, seed=0)\n")
    folders = [tmp_path / f"ink{seed}" / "ink" for seed in (1, 2, 3)]
    for seed, folder in zip((1, 2, 3), folders):
        folder.parent.mkdir()
        subprocess.run([sys.executable, "-c", save, str(tiny_model), str(folder)], cwd=ROOT, check=True, timeout=300,
                       env=os.environ | {"PYTHONHASHSEED": str(seed)})
    for name in ("pytorch_lora_weights.safetensors", "ink_kohya.safetensors"):
        assert len({(folder / name).read_bytes() for folder in folders}) == 1, name


FULL = """
import resource, sys, torch
from pathlib import Path
from stylemix.errors import run_stage
from stylemix.outputs import atomic_dir, atomic_write, save_safetensors
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # as `ulimit -f 4`: a write past 4 KiB fails (EFBIG)
kind, out = sys.argv[1], Path(sys.argv[2])

def main():
    if kind == "file":
        atomic_write(out, "new" * 5000)
    elif kind == "folder":
        with atomic_dir(out) as tmp:
            save_safetensors({"w": torch.zeros(5000)}, tmp / "w.safetensors")
    else:  # any other write: run_stage's one line
        (out / "log.txt").write_text("new" * 5000)
run_stage(main)
"""


@pytest.mark.parametrize("kind", ["file", "folder", "elsewhere"])
def test_a_full_disk_is_one_line_naming_the_output_and_the_old_one_stays(tmp_path, kind):
    out = tmp_path / ("out.json" if kind == "file" else "out")
    if kind == "file":
        out.write_text("old")
    else:
        out.mkdir()
        (out / "w.safetensors").write_text("old")
    result = subprocess.run([sys.executable, "-c", FULL, kind, str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    said = ("a file: no room to write it (File too large)" if kind == "elsewhere" else  # Python's write names no file
            f"{out}: no room to write it (File too large); what was there before is as it was")
    assert result.returncode == 2 and result.stderr == f"error: {said}: free disk space (`df -h`) and run it again\n"
    assert (out.read_text() if kind == "file" else (out / "w.safetensors").read_text()) == "old"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temporary left beside it
