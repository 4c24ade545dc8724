"""DVC's experiment-queue workers on this machine, for the commands that read the queue.

`dvc queue start -j N` starts N celery workers that end themselves once the queue is empty. With
several, a worker's monitor thread can die reading a broker message that another process is still
writing (kombu's filesystem transport moves a message file to read it without waiting for its
writer; treeverse/dvc#10428, dvc-task#73): that worker then idles forever, holding nothing but
its process. `dvc queue stop` ends it. The opposite race also happens: a worker ends while tasks
are still queued (treeverse/dvc#10562); `dvc queue start` again picks them up.
"""
import json
import os
from pathlib import Path

WORKERS = Path(".dvc/tmp/exps/celery")  # dvc-task records each worker in dvc-exp-worker-<n>.json


def _running(pid: int) -> bool:
    """Whether `pid` is a queue worker (its command line says so, where /proc shows it)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.parent.is_dir():
        try:
            return b"queue-worker" in cmdline.read_bytes()
        except FileNotFoundError:  # no such process here, or a /proc of another pid namespace
            pass
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def workers(repo: Path | str = ".") -> dict[str, int]:
    """{worker name: pid} of the repo's queue workers that are still running."""
    alive = {}
    for info in sorted((Path(repo) / WORKERS).glob("dvc-exp-worker-*.json")):
        try:
            record = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        if record.get("pid") and record.get("returncode") is None and _running(record["pid"]):
            alive[info.stem] = record["pid"]
    return alive
