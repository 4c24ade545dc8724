"""Benchmark: the README's `make repro` on a fresh clone of the current commit, as a new user runs
it (the virtualenv installed from scratch), then `make repro` again, which must find nothing to do.
Baseline from the same run: `dvc status`, the hashing every up-to-date check pays.

    python bench/repro.py               # ~6 min on 2 CPU cores; writes bench/results/repro.json
    python bench/repro.py --reuse-venv  # link this checkout's .venv instead of installing one
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "repro.json"
TARGETS_S = {"make_repro": 600, "second_repro": 10}


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, result.stdout


def stages_run(log: str) -> int:
    return sum(line.startswith("Running stage") for line in log.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reuse-venv", action="store_true")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    clone = Path(tempfile.mkdtemp(prefix="bench-repro-")) / "stylemix"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    if args.reuse_venv:
        (clone / ".venv").symlink_to(ROOT / ".venv")
    env_note = "reused .venv" if args.reuse_venv else "fresh .venv"
    os.environ.pop("VIRTUAL_ENV", None)

    try:
        setup_s, _ = timed(["make", "setup"], clone)
        first_s, first_log = timed(["make", "repro"], clone)
        second_s, second_log = timed(["make", "repro"], clone)
        status_s, _ = timed([str(clone / ".venv/bin/dvc"), "status"], clone)
    finally:
        if args.reuse_venv:  # the clone's `make setup` pointed the shared venv's editable install at the clone
            subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT)],
                           check=True, timeout=600)
    result = {
        "commit": commit, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU", "setup": env_note,
        "setup_s": round(setup_s, 1),
        "first_repro_s": round(first_s, 1), "first_repro_stages": stages_run(first_log),
        "make_repro_s": round(setup_s + first_s, 1),
        "second_repro_s": round(second_s, 2), "second_repro_stages": stages_run(second_log),
        "dvc_status_s": round(status_s, 2),
        "second_repro_over_dvc_status": round(second_s / status_s, 2),
        "targets_s": TARGETS_S,
        "meets_targets": setup_s + first_s <= TARGETS_S["make_repro"] and second_s <= TARGETS_S["second_repro"],
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
