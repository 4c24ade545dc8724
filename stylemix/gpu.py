"""One GPU per stage process when several run at once (`dvc queue start -j N` on a multi-GPU box).

DVC's queue workers share one environment, so every stage would pick cuda:0. Before a stage
touches CUDA, `claim()` takes the first GPU that no other stylemix process holds (a lock file per
GPU; the OS drops it when the process ends, even on kill -9) and narrows CUDA_VISIBLE_DEVICES to
it, so torch, accelerate and bitsandbytes all see that GPU as cuda:0. When every GPU is held it
waits for one. The pool is CUDA_VISIBLE_DEVICES when set, else every GPU; with one GPU, or
under `accelerate launch` (which places its processes itself), it does nothing.
"""
import os
import tempfile
import time
from pathlib import Path

import torch
from filelock import FileLock, Timeout

LOCKS = Path(os.environ.get("STYLEMIX_GPU_LOCKS", tempfile.gettempdir()))
_held: FileLock | None = None


def pool() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries. Counted through NVML, so
    CUDA itself is not initialised and the narrowing still takes effect."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def claim(poll_s: float = 5.0) -> str | None:
    """Hold one GPU of the pool for this process; returns it (None when there is nothing to choose)."""
    global _held
    gpus = pool()
    if _held or len(gpus) < 2 or "LOCAL_RANK" in os.environ or torch.cuda.is_initialized():
        return None
    LOCKS.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for gpu in gpus:
            lock = FileLock(LOCKS / f"stylemix-gpu-{gpu}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            _held = lock
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            return gpu
        if not waited:
            print(f"gpu: all of {','.join(gpus)} are held by other stylemix processes; waiting for one")
            waited = True
        time.sleep(poll_s)


def default_device() -> torch.device:
    """CUDA when there is a GPU (one of its own when several stages share several GPUs), else the CPU."""
    claim()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
