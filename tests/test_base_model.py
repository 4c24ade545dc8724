import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from stylemix.base_model import build_tiny, clip_tokenizer, copy_pretrained_tiny, identity, load_pipeline
from stylemix.demo_data import PHOTOS, photo, random_view
from stylemix.errors import StyleMixError
from stylemix.paths import PRETRAINED_TINY
from stylemix.render import SCHEDULERS
from tests.conftest import ROOT
from tests.readme import commands

PROMPT = "anistyle, a portrait of a young woman in a garden"


def test_tokenizer_matches_open_clip():
    ids = clip_tokenizer()(PROMPT).input_ids
    reference = open_clip.tokenize([PROMPT])[0]
    assert ids == reference[: len(ids)].tolist()
    assert ids[0] == 49406 and ids[-1] == 49407 and len(ids) == 14


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.safetensors"))}


def test_tiny_is_deterministic(tiny_model, tmp_path):
    assert digest(build_tiny(tmp_path / "again")) == digest(tiny_model)
    assert digest(build_tiny(tmp_path / "other", seed=1)) != digest(tiny_model)


def test_tiny_loads_back_through_from_pretrained(tiny_model):
    pipe = load_pipeline(str(tiny_model))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.vae_scale_factor == 8  # real SD geometry: 64 px images -> 8x8 latents
    assert pipe.tokenizer(PROMPT).input_ids == clip_tokenizer()(PROMPT).input_ids
    image = pipe("a cat", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_dtype_is_honoured(tiny_model):
    pipe = load_pipeline(str(tiny_model), dtype="bfloat16")
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16


def test_missing_hub_model_says_where_it_looked():
    with pytest.raises(StyleMixError) as err:
        load_pipeline("nobody/no-such-model")
    message = str(err.value)
    assert "Hugging Face cache" in message and "HF_HUB_OFFLINE" in message and "\n" not in message


def test_missing_single_file(tmp_path):
    with pytest.raises(StyleMixError, match="no such file"):
        load_pipeline(str(tmp_path / "anything-v5.safetensors"))


def test_identity_of_local_folder(tiny_model):
    pinned = identity(str(tiny_model), None)
    assert pinned["kind"] == "local" and "unet/diffusion_pytorch_model.safetensors" in pinned["files"]


def thumbnail(rgb) -> np.ndarray:
    return np.asarray(Image.fromarray(np.asarray(rgb)).resize((8, 8), Image.Resampling.BOX), dtype=np.float32)


def test_the_pretrained_tiny_draws_each_photo_from_its_caption(tmp_path):
    """The committed `tiny` has learned the photos: a caption's drawing looks most like its own photo
    (8x8 thumbnails) for most subjects and seeds; a random model would match 1 in 8."""
    pipe = load_pipeline(str(copy_pretrained_tiny(tmp_path / "tiny")))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SCHEDULERS["dpmsolver++"](pipe.scheduler.config)
    photos = [thumbnail(random_view(photo(i)[0], np.random.default_rng(0), 64, share=1.0)) for i in range(len(PHOTOS))]
    hits = 0
    for i, (_, caption, _) in enumerate(PHOTOS):
        for seed in (0, 1):
            drawn = pipe(caption, negative_prompt="blurry, low quality", num_inference_steps=10, guidance_scale=7.5,
                         height=64, width=64, generator=torch.Generator().manual_seed(seed)).images[0]
            hits += int(np.argmin([np.abs(thumbnail(drawn) - p).mean() for p in photos]) == i)
    assert hits >= 10, f"{hits} of 16 drawings nearest their own photo"


def test_the_pretrain_script_writes_what_the_base_stage_copies(tmp_path):
    """The README's pretraining command, at a few steps instead of ~1,700."""
    line, = commands("pretrain", {"--out /tmp/tiny": f"--out {tmp_path / 'tiny'} --vae-steps 2 --unet-steps 2 --bank 2"})
    subprocess.run(["bash", "-c", line], cwd=ROOT, check=True, timeout=600, capture_output=True,
                   env=os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["model_index.json", "samples.png", "scheduler",
                                                                     "text_encoder", "unet", "vae"]
    committed = json.loads((PRETRAINED_TINY / "unet/config.json").read_text())
    assert json.loads((tmp_path / "tiny/unet/config.json").read_text()) == committed  # the same architecture
