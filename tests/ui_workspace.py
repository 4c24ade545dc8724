"""A workspace the web UI can serve without running the pipeline: the demo's pretrained `tiny` as
models/base, two styles whose LoRAs are random (seeded, so each changes the picture its own way)
and their linear combination, written by the same library code train@S and merge@C use."""
import os
import shutil
from pathlib import Path

import torch

from tests.conftest import ROOT

STYLES = {"openmoji": "omstyle", "lineart": "lastyle"}
COMBO = "flat_lineart"


def make_workspace(root: Path, model: str = "tiny") -> Path:
    """`model`: tiny, or tiny-flux / tiny-sd3 (untrained: built here), drawn with their own sampler."""
    import yaml

    from stylemix import params
    from stylemix.adapters.lora_files import add_lora, save_lora
    from stylemix.families import FLUX, SD3, denoiser
    from stylemix.mixing.merging import merge_combo
    from stylemix.models.base_model import copy_pretrained_tiny, load_pipeline
    from stylemix.models.tiny_flow import build_tiny_flow

    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    if model != "tiny":
        raw = yaml.safe_load((root / "params.yaml").read_text())
        raw["base"] |= {"model": model, "resolution": 32}
        raw["generate"] |= {"scheduler": "euler", "steps": 2}
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (root / "stylemix").mkdir()
    (root / "stylemix/pretrained").symlink_to(ROOT / "stylemix/pretrained")  # the demo scorer, where params.yaml says
    here = os.getcwd()
    os.chdir(root)
    try:
        if model == "tiny":
            copy_pretrained_tiny(root / "models/base")
        else:
            build_tiny_flow(root / "models/base", {"tiny-flux": FLUX, "tiny-sd3": SD3}[model])
        for i, (name, trigger) in enumerate(STYLES.items()):
            pipe = load_pipeline(model)
            torch.manual_seed(i)  # lora_A's init too: the pictures must not depend on what this process ran before
            prefix = "" if model == "tiny" else "attn."  # SD 3.5's attn2 aside (ComfyUI does not name it)
            add_lora(denoiser(pipe), [], params.Lora(rank=4, alpha=4, targets=[prefix + t for t in ("to_q", "to_k", "to_v", "to_out.0")]))
            for n, p in denoiser(pipe).named_parameters():
                if "lora_B" in n:
                    p.data.normal_(0, 0.3)
            save_lora(root / "models/lora" / name, name, pipe, {"style": name, "trigger": trigger, "base_model": model,
                                                               "resolution": 64 if model == "tiny" else 32, "rank": 4, "alpha": 4})
        merge_combo(COMBO, params.Combo(weights={"openmoji": 0.5, "lineart": 0.5}))
    finally:
        os.chdir(here)
    return root


def bomb_png(path: Path) -> None:
    """A 65-byte PNG that claims 100,000 x 100,000 pixels: a decompression bomb for a naive reader."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
