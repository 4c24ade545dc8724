"""Masked loss from alpha (train.masked_loss; kohya's alpha_mask, OneTrainer's masked training): the
filter keeps transparency, encode@S caches each image's alpha at latent resolution, and the loss
counts the subject, the background at unmasked_weight."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image
from safetensors import safe_open

from stylemix import params
from stylemix.adapters.lora_files import kohya_file
from stylemix.demo.sample import build_style
from stylemix.errors import StyleMixError
from stylemix.images import load_image
from stylemix.training.loop import diffusion_loss, open_latents
from tests.test_train import make_params, prepare, train

SUBJECT = 1e5  # latent value that marks the subject, so a stand-in UNet can tell it from noise at any timestep


def test_the_loss_counts_the_subject_and_its_mask_flips_with_the_image():
    """A UNet right on the subject and 100 off everywhere else loses exactly what a UNet right
    everywhere loses when the background is not counted, mirrored images included."""
    b = 16
    subject = torch.zeros(b, 4, 8, 8)
    subject[..., :4] = SUBJECT  # the left half; the mirror image's is the right half
    batch = {"mean": subject, "mean_flipped": subject.flip(-1), "std": torch.zeros(b, 4, 8, 8), "std_flipped": torch.zeros(b, 4, 8, 8),
             "mask": (subject[:, :1] > 0).float(), "text_hidden": torch.zeros(b, 77, 32), "empty_text_hidden": torch.zeros(1, 77, 32)}
    exact = lambda noisy, t, cond, **kw: SimpleNamespace(sample=torch.zeros_like(noisy))  # noqa: E731  the noise is what it misses
    off = lambda noisy, t, cond, **kw: SimpleNamespace(sample=torch.where(noisy.abs() > 20, 0.0, 100.0))  # noqa: E731
    scheduler = DDPMScheduler()

    def loss(unet, **masked) -> float:
        cfg = params.Train(min_snr_gamma=None, random_flip=True, masked_loss=params.MaskedLoss(**masked))
        return float(diffusion_loss(unet, scheduler, batch, cfg, torch.Generator().manual_seed(0)))

    assert loss(off, enabled=True, unmasked_weight=0) == pytest.approx(loss(exact, enabled=True, unmasked_weight=0), rel=1e-6)
    assert loss(off, enabled=True, unmasked_weight=0.1) > 100 * loss(exact, enabled=True, unmasked_weight=0.1)
    assert loss(off) > 1000 * loss(exact)  # without it, the background counts in full


def test_transparent_images_keep_their_alpha_into_the_cache_and_train_masked(tmp_path, tiny_model):
    (tmp_path / "src").mkdir()
    build_style("openmoji", tmp_path / "src", count=6, seed=0)
    p = make_params(tiny_model, tmp_path / "src", "openmoji", masked_loss={"enabled": True, "unmasked_weight": 0.0})
    prepare("openmoji", tmp_path, p)
    folder = tmp_path / "filtered/openmoji"
    emoji, gray = load_image(folder / "openmoji_000.png"), load_image(folder / "gray.png")
    assert emoji.mode == "RGBA" and gray.mode == "RGB"  # the filter keeps what is transparent, and only that
    cache = open_latents("openmoji", 32, tmp_path / "latents")
    masks = dict(zip(cache.files, [m for bucket, count in cache.buckets.items() for m in cache.rows(bucket, list(range(count)))["mask"]]))
    alpha = torch.from_numpy(np.array(emoji.getchannel("A"))).float()[None, None] / 255
    assert torch.allclose(masks["openmoji_000.png"], F.interpolate(alpha, size=masks["openmoji_000.png"].shape[-2:], mode="area")[0])
    assert 0 < masks["openmoji_000.png"].mean() < 1 and (masks["gray.png"] == 1).all()
    result = train(tmp_path, tmp_path, p.model_copy(update={"train": p.train.model_copy(update={"max_steps": 2})}))
    assert result["steps"] == 2 and np.isfinite(result["final_loss"])
    with safe_open(tmp_path / "a/lora/openmoji" / kohya_file("openmoji"), "pt") as f:
        assert f.metadata()["ss_masked_loss"] == "True"
    assert "The loss counted the subject (alpha), the background at 0." in (tmp_path / "a/lora/openmoji/README.md").read_text()


def test_masked_loss_on_opaque_images_is_one_line(tmp_path, tiny_model):
    (tmp_path / "src").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "src" / f"noise_{i}.png")
        (tmp_path / "src" / f"noise_{i}.txt").write_text("noise\n")
    p = make_params(tiny_model, tmp_path / "src", masked_loss={"enabled": True})
    prepare("flat", tmp_path, p)
    with pytest.raises(StyleMixError, match=r"style flat: train.masked_loss needs transparent images .* none of its 4 images is; "
                                            r"turn it off for this style \(styles.flat.train.masked_loss.enabled: false\)"):
        train(tmp_path, tmp_path, p)
