"""Write outputs to a temporary sibling and rename into place, so a killed stage or a full disk
never leaves a half-written file or folder that looks finished (the previous one stays as it was);
and write them byte-identical for identical contents, so DVC sees an unchanged output and skips
what depends on it."""
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stylemix.errors import room_for


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `path` whole. A killed writer's
    leftover temporary folders go first (DVC's lock lets one stage write an output at a time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o755)
    try:
        with room_for(path):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(tmp, path)


def atomic_write(path: Path | str, data: bytes | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with room_for(path), os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
    except BaseException:
        os.unlink(tmp)
        raise
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_json(path: Path | str, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path | str, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path | str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def save_safetensors(tensors: dict, path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """safetensors.torch.save_file, with the header's keys sorted: safetensors writes the metadata
    in a random order per process (safetensors issue #584), so equal LoRAs would differ in bytes
    and every stage after them would rerun. Offsets in the header are relative to the data, so
    rewriting the header leaves the tensors as they are."""
    from safetensors.torch import save

    data = save(tensors, metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes with spaces
    atomic_write(path, len(header).to_bytes(8, "little") + header + data[8 + size :])

