"""stylemix.queue.workers: which of a repo's DVC queue workers still run (the e2e tests use it to find
a worker left idle by the broker race, and `stylemix sweep` to remind the user of it)."""
import json
import os
import subprocess
import sys

from stylemix.queue import WORKERS, workers


def test_only_running_queue_workers_count(tmp_path):
    folder = tmp_path / WORKERS
    folder.mkdir(parents=True)
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "queue-worker"])
    try:
        (folder / "dvc-exp-worker-1.json").write_text(json.dumps({"pid": fake.pid, "returncode": None}))
        (folder / "dvc-exp-worker-2.json").write_text(json.dumps({"pid": fake.pid, "returncode": 0}))  # recorded as ended
        (folder / "dvc-exp-worker-3.json").write_text(json.dumps({"pid": os.getpid(), "returncode": None}))  # no worker
        (folder / "dvc-exp-worker-4.json").write_text("")  # being written
        assert workers(tmp_path) == {"dvc-exp-worker-1": fake.pid}
    finally:
        fake.kill()
        fake.wait(timeout=30)
    assert workers(tmp_path) == {}
