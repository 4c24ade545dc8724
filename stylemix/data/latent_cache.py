"""The file encode@S writes and train@S, validate and the tests read: one safetensors file per split
(training, held-out) of a style's per-image tensors, grouped by aspect-ratio bucket.

Keys: `<w>x<h>/<name>` holds one row per image of that bucket (latents, captions' encodings, token
ids, time ids, tag variants); names without a bucket (the empty caption's `empty_` tensors) are
shared. Metadata: the image files and captions in row order (bucket after bucket), the buckets
with their image counts, the resolution, the base model and the caption tokens read (tags.max_token_length).
Readers open it memory-mapped and copy out only the rows a batch needs, so a style of thousands of
images never sits in memory (or on the GPU) whole.
"""
import itertools
import json
from pathlib import Path

import torch
from safetensors import safe_open

from stylemix.data import buckets
from stylemix.data.conditioning import VARIANTS
from stylemix.outputs import save_safetensors


def save(path: Path, groups: dict[str, dict[str, torch.Tensor]], shared: dict[str, torch.Tensor], files: list[str],
         captions: list[str], meta: dict[str, str]) -> None:
    """Write `groups` (bucket name -> per-image tensors, rows in the order of `files`) and `shared`."""
    tensors = {f"{bucket}/{key}": value.contiguous() for bucket, group in groups.items() for key, value in group.items()}
    counts = {bucket: len(next(iter(group.values()))) for bucket, group in groups.items()}
    save_safetensors(tensors | shared, path, meta | {"files": json.dumps(files), "captions": json.dumps(captions),
                                                    "buckets": json.dumps(counts)})


def save_rows(path: Path, per_image: dict[str, list], shared: dict[str, torch.Tensor], rows: list[int], files: list[str],
              sizes: list[tuple[int, int]], captions: list[str], meta: dict[str, str]) -> None:
    """Write images `rows` of `per_image` (key -> one tensor per image), grouped by their bucket in
    `sizes`, bucket after bucket."""
    rows = sorted(rows, key=lambda i: (sizes[i], i))
    groups = {buckets.name(size): {k: torch.stack([per_image[k][i] for i in rows if sizes[i] == size]) for k in per_image}
              for size in sorted({sizes[i] for i in rows})}
    save(path, groups, shared, [files[i] for i in rows], [captions[i] for i in rows], meta)


class LatentCache:
    """One split's file, open for reading rows."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = safe_open(self.path, "pt")  # memory-mapped: nothing is read until asked for
        meta = self._file.metadata()
        self.resolution, self.architecture = int(meta["resolution"]), meta.get("architecture")
        self.max_token_length = int(meta.get("max_token_length", 75))  # caption tokens the cached encodings read
        self.files, self.captions = json.loads(meta["files"]), json.loads(meta["captions"])
        self.buckets: dict[str, int] = json.loads(meta["buckets"])  # name -> images, in row order
        keys = list(self._file.keys())
        self.keys = {bucket: sorted(k.split("/", 1)[1] for k in keys if k.startswith(bucket + "/")) for bucket in self.buckets}
        self.shared = {k: self._file.get_tensor(k) for k in keys if "/" not in k}

    def __len__(self) -> int:
        return len(self.files)

    def rows(self, bucket: str, rows: list[int], variant: int | None = None) -> dict[str, torch.Tensor]:
        """The per-image tensors of `rows` of `bucket`, with the shared ones. With tag variants cached,
        `variant` (epoch mod variants) replaces each caption tensor by that variant's."""
        plain = [k for k in self.keys[bucket] if not k.startswith(VARIANTS)]
        out = {key: torch.stack([self._slice(bucket, key)[i] for i in rows]) for key in plain}
        for key in self.keys[bucket] if variant is not None else []:
            if key.startswith(VARIANTS):
                part = self._slice(bucket, key)
                out[key.removeprefix(VARIANTS)] = torch.stack([part[i, variant % part.get_shape()[1]] for i in rows])
        return out | self.shared

    def _slice(self, bucket: str, key: str):
        return self._file.get_slice(f"{bucket}/{key}")

    def groups(self) -> list[dict[str, torch.Tensor]]:
        """Every bucket's tensors whole, in row order: for the few held-out images."""
        return [self.rows(bucket, list(range(count))) for bucket, count in self.buckets.items()]

    def group_captions(self) -> list[list[str]]:
        """The captions of each bucket's images, as groups() orders them."""
        ends = list(itertools.accumulate(self.buckets.values()))
        return [self.captions[end - count : end] for end, count in zip(ends, self.buckets.values())]
