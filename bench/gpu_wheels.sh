#!/usr/bin/env bash
# Fetch the wheels bench/gpu_train.py needs on the GPU machine (bench/gpu_wheels.txt) into .whl/,
# for Python 3.12 on x86-64 Linux, and keep .whl/ out of git. Then the device call in docs/gpus.md runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl -r bench/gpu_wheels.txt
du -sh .whl
