"""The demo's CLIP scorer (stylemix/pretrained/tiny-clip): the script that makes it writes what the
score stage loads, and the committed one tells the demo's styles apart on images it never saw."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylemix import params
from stylemix.demo_data import PHOTOS
from stylemix.paths import PRETRAINED_TINY_CLIP
from stylemix.pretrain_clip import LOOKS, look_image
from stylemix.scoring import describe, embed_images, load_scorer
from tests.conftest import ROOT
from tests.readme import commands


def test_the_pretrain_clip_script_writes_what_the_score_stage_loads(tmp_path):
    """The README's command, at 2 steps and 2 crops per pair instead of 600 and 24."""
    line, = commands("pretrain-clip", {"--out /tmp/tiny-clip": f"--out {tmp_path / 'clip'} --steps 2 --per-pair 2"})
    subprocess.run(["bash", "-c", line], cwd=ROOT, check=True, timeout=600, capture_output=True,
                   env=os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    cfg = params.Score(clip_model=f"local-dir:{tmp_path / 'clip'}")
    model, _, _ = load_scorer(cfg)
    assert model.visual.image_size == (64, 64)
    assert describe(cfg)["scorer_pretrained"] and "demo" in describe(cfg)["about"]


def test_the_demo_scorer_tells_the_styles_apart():
    """Fresh crops (a seed the script never used) of every photo in every style and as a photo: each
    look's crops are nearest, on average, to that look's reference (the mean of other fresh crops),
    as the score stage measures style similarity. A random network gets about a third right."""
    scorer = load_scorer(params.Score(clip_model=f"local-dir:{PRETRAINED_TINY_CLIP}"))

    def crops(look: str, seed: int) -> list[Image.Image]:  # the script's own crop maker, at other seeds
        rng = np.random.default_rng([seed, list(LOOKS).index(look)])
        return [Image.fromarray(look_image(i, look, rng)) for i in range(len(PHOTOS))]

    refs = {look: torch.nn.functional.normalize(embed_images(scorer, crops(look, 101)).mean(0), dim=0) for look in LOOKS}
    for look in LOOKS:
        emb = embed_images(scorer, crops(look, 202))
        sims = {other: float((emb @ ref).mean()) for other, ref in refs.items()}
        assert max(sims, key=sims.get) == look, (look, sims)
