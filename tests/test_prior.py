"""Prior preservation (params `prior`; DreamBooth's class images, kohya's regularisation images): the
prior stage draws the base's pictures once (or fits a folder of your own), and every training step
also learns a batch of them at prior.weight; resumes bit-exactly; bad input is one line."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from stages.prior import build_prior
from stylemix import params
from stylemix.adapters.lora_files import kohya_file
from stylemix.errors import StyleMixError
from stylemix.training.loop import open_prior
from tests.test_train import data, killed_after, launch_two_processes, make_params, train, weights  # noqa: F401 (data: the fixture)

RESOLUTION = 32


@pytest.fixture(scope="module")
def drawn(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("prior") / "prior"
    cfg = params.Prior(images=6, prompts=["a red apple", "a cat"], steps=2)
    assert build_prior(cfg, params.Base(model=str(tiny_model), resolution=RESOLUTION), out) == 6
    return out, cfg


def test_the_base_draws_the_prior_once_with_its_prompts(drawn):
    out, cfg = drawn
    cache = open_prior(cfg, RESOLUTION, out)
    assert len(cache) == 6 and cache.captions == ["a red apple", "a cat"] * 3
    assert cache.buckets == {"32x32": 6} and "mask" not in cache.keys["32x32"]
    assert all(Image.open(out / "images" / f).size == (32, 32) for f in cache.files)
    assert (out / "images/prior_0001.txt").read_text() == "a cat\n" and (out / "prior.png").stat().st_size > 0
    assert json.loads((out / "prior.json").read_text())["images"] == 6


def test_off_writes_only_a_note_and_training_ignores_it(tmp_path, tiny_model):
    assert build_prior(params.Prior(), params.Base(model=str(tiny_model), resolution=RESOLUTION), tmp_path / "prior") == 0
    assert [f.name for f in (tmp_path / "prior").iterdir()] == ["prior.json"]
    assert open_prior(params.Prior(), RESOLUTION, tmp_path / "prior") is None


def test_training_learns_the_prior_too_and_resumes_bit_exactly(data, drawn, tmp_path, tiny_model):  # noqa: F811
    out, cfg = drawn
    plain = make_params(tiny_model, data / "src", max_steps=4)
    with_prior = plain.model_copy(update={"prior": cfg.model_copy(update={"weight": 0.5})})
    a = weights(train(data, tmp_path, plain, run="plain", prior_dir=out))
    b = weights(train(data, tmp_path, with_prior, run="prior", prior_dir=out))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the prior batch is in the loss
    with safe_open(tmp_path / "prior/lora/flat" / kohya_file("flat"), "pt") as f:
        assert (f.metadata()["ss_num_reg_images"], f.metadata()["ss_prior_loss_weight"]) == ("6", "0.5")
    assert "Prior preservation: 6 pictures of the base's at weight 0.5." in (tmp_path / "prior/lora/flat/README.md").read_text()
    killed_after(data, tmp_path, with_prior, 3, "killed", prior_dir=out)  # make_params checkpoints every 2 steps
    steps = []
    resumed = weights(train(data, tmp_path, with_prior, lambda step, _: steps.append(step), run="killed", prior_dir=out))
    assert steps == [3, 4] and all(torch.equal(resumed[k], b[k]) for k in b)


def test_two_cpu_processes_learn_the_prior(data, drawn, tmp_path, tiny_model):  # noqa: F811
    """Each process's step runs the UNet twice (its style batch, its prior batch) before one backward,
    which DDP's gradient sync must take."""
    out, cfg = drawn
    shutil.copytree(out, tmp_path / "data/prior")
    p = make_params(tiny_model, data / "src", max_steps=2, checkpoint_every=10).model_copy(update={"prior": cfg})
    log = launch_two_processes(tmp_path, data / "latents", p, "flat")
    assert log.count("train flat: 2 of 2 steps") == 1
    with safe_open(tmp_path / "models/lora/flat" / kohya_file("flat"), "pt") as f:
        assert f.metadata()["ss_num_reg_images"] == "6"


def test_a_folder_of_your_own_and_bad_input(data, tmp_path, tiny_model):  # noqa: F811
    base = params.Base(model=str(tiny_model), resolution=RESOLUTION)
    folder = tmp_path / "reg"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 40), (64, 32), (30, 50)]):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"reg_{i}.png")
    (folder / "reg_0.txt").write_text("a landscape\n")
    cfg = params.Prior(folder=str(folder), prompts=["an illustration"])
    build_prior(cfg, base.model_copy(update={"buckets": params.Buckets(enabled=True, step=8)}), tmp_path / "prior")
    cache = open_prior(cfg, RESOLUTION, tmp_path / "prior")
    assert dict(zip(cache.files, cache.captions)) == {"reg_0.png": "a landscape", "reg_1.png": "an illustration",
                                                      "reg_2.png": "an illustration"}
    assert len(cache.buckets) == 3  # each picture fitted to its own bucket
    with_folder = make_params(tiny_model, data / "src", batch_size=2).model_copy(update={"prior": cfg})
    with pytest.raises(StyleMixError, match=r"prior: 3 pictures, fewer than one step's batch .* raise prior.images"):
        train(data, tmp_path, with_folder, prior_dir=tmp_path / "prior")  # three buckets of one
    (folder / "reg_3.png").write_bytes(b"not a picture")
    with pytest.raises(StyleMixError, match=r"reg_3.png: not an image file; remove it from prior.folder"):
        build_prior(cfg, base, tmp_path / "again")
    assert not (tmp_path / "again").exists()
    with pytest.raises(StyleMixError, match=r"prior.folder = .*: no image files there"):
        build_prior(params.Prior(folder=str(tmp_path / "nowhere")), base, tmp_path / "again")
    with pytest.raises(StyleMixError, match=r"prior preservation is on .* has no pictures \(.*missing\); run `dvc repro prior`"):
        open_prior(params.Prior(images=4), RESOLUTION, tmp_path / "again")
