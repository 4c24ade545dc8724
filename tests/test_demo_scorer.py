"""The demo's CLIP scorer (stylemix/pretrained/tiny-clip): the script that makes it writes what the
score stage loads, and the committed one tells the six looks and the held-out subjects apart on views
it never saw, as the ground truth asks of it."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylemix import emoji, params
from stylemix.evaluation.scoring import describe, embed_images, embed_texts, load_scorer
from stylemix.paths import PRETRAINED_TINY_CLIP
from tests.conftest import ROOT
from tests.readme import commands


def test_the_pretrain_clip_script_writes_what_the_score_stage_loads(tmp_path):
    """The README's command, at 2 steps, one view a pair and 4 subjects a batch."""
    line, = commands("pretrain-clip", {"--out /tmp/tiny-clip": f"--out {tmp_path / 'clip'} --steps 2 --per-pair 1 --subjects-per-batch 4"})
    subprocess.run(["bash", "-c", line], cwd=ROOT, check=True, timeout=600, capture_output=True,
                   env=os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    cfg = params.Score(clip_model=f"local-dir:{tmp_path / 'clip'}")
    model, _, _ = load_scorer(cfg)
    assert model.visual.image_size == (64, 64)
    assert describe(cfg)["scorer_pretrained"] and "never on generated ones" in describe(cfg)["about"]


def test_the_demo_scorer_tells_looks_and_subjects_apart():
    """Fresh views (a seed the script never used) of params.yaml's held-out subjects in every look: each
    view's nearest look (the mean of the views of all of them in each look) and nearest name (among the
    held-out names) are right for most, as the score stage judges generated pictures. A random network
    gets a sixth and a twelfth."""
    heldout = params.load("sample", path=ROOT / "params.yaml").sample.heldout
    scorer = load_scorer(params.Score(clip_model=f"local-dir:{ROOT / PRETRAINED_TINY_CLIP.relative_to(ROOT)}"))
    rng = np.random.default_rng(404)
    views = {look: embed_images(scorer, [Image.fromarray(emoji.random_view(look, s, 64, rng, zoom=(0.8, 1.25))) for s in heldout])
             for look in emoji.LOOKS}
    centroids = torch.nn.functional.normalize(torch.stack([v.mean(0) for v in views.values()]), dim=-1)
    names = embed_texts(scorer, [emoji.words(s) for s in heldout])
    looks_right = sum(int(((v @ centroids.T).argmax(-1) == j).sum()) for j, v in enumerate(views.values()))
    subjects_right = sum(int(((v @ names.T).argmax(-1) == torch.arange(len(heldout))).sum()) for v in views.values())
    total = len(heldout) * len(emoji.LOOKS)
    assert looks_right >= 0.8 * total and subjects_right >= 0.6 * total, (looks_right, subjects_right, total)
