"""stylemix.commands.queue.workers: which of a repo's DVC queue workers still run (the e2e tests use it to find
a worker left idle by the broker race, and `stylemix sweep` to remind the user of it)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from stylemix.commands.queue import WORKERS, workers


def test_only_running_queue_workers_count(tmp_path):
    folder = tmp_path / WORKERS
    folder.mkdir(parents=True)
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "queue-worker"])
    try:
        (folder / "dvc-exp-worker-1.json").write_text(json.dumps({"pid": fake.pid, "returncode": None}))
        (folder / "dvc-exp-worker-2.json").write_text(json.dumps({"pid": fake.pid, "returncode": 0}))  # recorded as ended
        (folder / "dvc-exp-worker-3.json").write_text(json.dumps({"pid": os.getpid(), "returncode": None}))  # no worker
        (folder / "dvc-exp-worker-4.json").write_text("")  # being written
        deadline = time.monotonic() + 30  # CI once failed here without detail: give /proc time, then show it
        while workers(tmp_path) != {"dvc-exp-worker-1": fake.pid} and time.monotonic() < deadline:
            time.sleep(0.2)
        proc = Path(f"/proc/{fake.pid}/cmdline")
        assert workers(tmp_path) == {"dvc-exp-worker-1": fake.pid}, (fake.pid, proc.read_bytes() if proc.exists() else None)
    finally:
        fake.kill()
        fake.wait(timeout=30)
    assert workers(tmp_path) == {}


def test_sweep_says_what_the_queue_needs(monkeypatch, capsys):
    """`stylemix sweep` names both ways DVC's workers go wrong: none left while tasks are queued
    (treeverse/dvc#10562: start them again), one left when nothing is (#10428: stop it)."""
    import dvc.api

    from stylemix.commands import sweep

    rows = [{"rev": "workspace", "State": None, "Created": None, "lora.rank": 8, "lora.alpha": 8},
            {"rev": "a1", "State": "Success", "Created": "2026-11-28T01:00:00", "lora.rank": 4, "lora.alpha": 4},
            {"rev": "b2", "State": "Queued", "Created": "2026-11-28T01:01:00", "lora.rank": 16, "lora.alpha": 4}]
    monkeypatch.setattr(dvc.api, "exp_show", lambda repo: rows)
    monkeypatch.setattr(sweep, "workers", lambda repo: {})
    assert list(sweep.experiments("lora.rank", "lora.alpha").index) == [(4, 4)]
    assert "1 experiment(s) still queued and no queue worker runs: `dvc queue start` picks them up" in capsys.readouterr().out
    rows[2]["State"] = "Success"
    monkeypatch.setattr(sweep, "workers", lambda repo: {"dvc-exp-worker-1": 123})
    assert list(sweep.experiments("lora.rank", "lora.alpha").index) == [(4, 4), (16, 4)]
    out = capsys.readouterr().out
    assert "1 queue worker(s) still run (dvc-exp-worker-1): `dvc queue stop` ends them" in out and "still queued" not in out
