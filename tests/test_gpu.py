"""One GPU per process when several stage processes share a multi-GPU machine (dvc queue -j N).
No GPU here: the processes are real, the GPU count is patched to 2."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CLAIM = """
import sys, torch
torch.cuda.device_count = lambda: 2
from stylemix import gpu
print(gpu.claim(poll_s=0.1), flush=True)
sys.stdin.read()  # hold the GPU until the test closes stdin
"""


@pytest.fixture
def start(tmp_path):
    """Start a claiming process; every one still running is killed when the test ends."""
    procs = []

    def start(**env):
        environ = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK")}
        procs.append(subprocess.Popen([sys.executable, "-c", CLAIM], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=environ | {"STYLEMIX_GPU_LOCKS": str(tmp_path)} | env))
        return procs[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=30)


def first_line(proc) -> str:
    return proc.stdout.readline().strip()


def release(proc) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


def test_concurrent_processes_get_different_gpus_and_wait_for_a_free_one(start):
    a = start()
    assert first_line(a) == "0"
    b = start()
    assert first_line(b) == "1"
    c = start()
    assert first_line(c).startswith("gpu: all of 0,1 are held")  # waits...
    release(a)
    assert first_line(c) == "0"  # ...and takes the GPU the first process left
    for proc in (b, c):
        release(proc)


def test_the_pool_is_cuda_visible_devices_and_accelerate_launch_is_left_alone(start):
    pinned = start(CUDA_VISIBLE_DEVICES="3,5")
    assert first_line(pinned) == "3"
    one = start(CUDA_VISIBLE_DEVICES="5")
    launched = start(LOCAL_RANK="0")
    assert first_line(one) == "None" and first_line(launched) == "None"
    for proc in (pinned, one, launched):
        release(proc)
