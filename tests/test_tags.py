"""Tag captions: a WD14-style ONNX tagger (built here, tiny) and the shuffled tag variants
encode@S caches for training."""
import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper
from PIL import Image
from safetensors import safe_open

from stages.caption import caption_style
from stages.encode import encode_style
from stylemix import params
from stylemix.data.conditioning import VARIANTS
from stylemix.data.encoding import encode_captions
from stylemix.data.prompts import tag_variants
from stylemix.errors import StyleMixError
from stylemix.models.base_model import load_pipeline
from stylemix.outputs import write_jsonl
from stylemix.paths import LATENTS_FILE
from stylemix.training.loop import open_latents, train_style
from stylemix.training.validation import load_heldout
from tests.conftest import ROOT
from tests.readme import block

# name, category (9 rating, 0 general, 4 character), weights on the mean B, G, R (0-1), bias
TAGS = [("general", "9", (0, 0, 0), 10),  # a rating: always certain, never written
        ("red_theme", "0", (0, 0, 20), -10), ("green_theme", "0", (0, 20, 0), -10), ("blue_theme", "0", (20, 0, 0), -10),
        ("white_background", "0", (0, 0, 0), 2.2),  # 0.9 on every image
        ("^_^", "0", (0, 0, 0), 0.1),  # 0.52 on every image: a kaomoji keeps its underscore
        ("hatsune_miku", "4", (0, 20, 0), -16)]  # a character: 0.98 on green, under character_threshold elsewhere


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """A tagger in SmilingWolf's layout: mean colour (BGR, NHWC, 0-255) -> one sigmoid per tag."""
    folder = tmp_path_factory.mktemp("tagger")
    weights = np.array([w for _, _, w, _ in TAGS], dtype=np.float32).T / 255
    bias = np.array([b for *_, b in TAGS], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits"]), helper.make_node("Add", ["logits", "b"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["output"])], "tiny_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 32, 32, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(TAGS)])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.flatten()),
         helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    with (folder / "selected_tags.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        writer.writerows([i, name, category, 100] for i, (name, category, _, _) in enumerate(TAGS))
    return folder


@pytest.fixture
def filtered(tmp_path):
    folder = tmp_path / "filtered" / "ink"
    folder.mkdir(parents=True)
    for name, colour, size in (("red", "red", (48, 48)), ("green", "lime", (48, 48)), ("strip", "blue", (48, 16))):
        Image.new("RGB", size, colour).save(folder / f"{name}.png")
    write_jsonl(folder / "index.jsonl", [{"file_name": f"{n}.png"} for n in ("red", "green", "strip")])
    return tmp_path


def tag(filtered, tagger, **options) -> dict[str, str]:
    cfg = params.Caption(backend="tags", batch_size=2, tagger=params.Tagger(model=str(tagger), **options))
    return {r["file_name"]: r["text"] for r in caption_style("ink", cfg, filtered / "filtered", filtered / "captions")}


def test_tagger_writes_what_the_model_sees(filtered, tagger):
    tags = tag(filtered, tagger)
    # BGR input: a red image reads as red. Character tags first, then general tags by confidence;
    # the rating never; spaces for underscores except in a kaomoji.
    assert tags["red.png"] == "red theme, white background, ^_^"
    assert tags["green.png"] == "hatsune miku, green theme, white background, ^_^"
    # White padding to a square: a 48x16 blue strip is two-thirds white, so every colour fires.
    assert tags["strip.png"].startswith("blue theme, ") and "red theme" in tags["strip.png"]
    assert tag(filtered, tagger, underscores=True)["red.png"] == "red_theme, white_background, ^_^"
    assert tag(filtered, tagger, threshold=0.95)["red.png"] == "red theme"
    assert tag(filtered, tagger, character_threshold=1.0)["green.png"].startswith("green theme")


def test_excluded_tags_and_a_caption_left_with_none(filtered, tagger, capsys):
    tags = tag(filtered, tagger, exclude=["white background", "^_^"], threshold=0.95)
    assert tags["red.png"] == "red theme"
    tags = tag(filtered, tagger, exclude=["red theme", "white_background", "^_^"], threshold=0.95)
    assert tags["red.png"] == ""
    assert ("every tag of 1 image(s) is in caption.tagger.exclude, so they train on the trigger word alone: red.png"
            in capsys.readouterr().out)


def test_a_tagger_that_cannot_load_is_one_line(filtered, tagger, tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half/model.onnx").write_bytes((tagger / "model.onnx").read_bytes())
    with pytest.raises(StyleMixError, match=r"caption.tagger.model = '.*half': no selected_tags.csv in that folder"):
        tag(filtered, tmp_path / "half")
    with pytest.raises(StyleMixError, match=r"caption.tagger.model = 'SmilingWolf/wd-vit-tagger-v3': cannot load .*HF_HUB_OFFLINE"):
        tag(filtered, "SmilingWolf/wd-vit-tagger-v3")
    (tmp_path / "half/selected_tags.csv").write_text("tag_id,name,category,count\n0,a,0,1\n")
    with pytest.raises(StyleMixError, match=r"outputs 7 scores but .*selected_tags.csv lists 1 tags"):
        tag(filtered, tmp_path / "half")


def test_tag_variants_keep_the_first_tags_and_are_seeded_per_image():
    caption = "ffstyle, red theme, white background, 1girl, smile"
    cfg = params.Tags(shuffle=True, keep_tokens=1, variants=6)
    variants, emptied = tag_variants(caption, cfg, "a.png")
    assert emptied == 0 and len(variants) == 6
    for v in variants:
        tags = v.split(", ")
        assert tags[0] == "ffstyle" and sorted(tags[1:]) == sorted(caption.split(", ")[1:])
    assert len(set(variants)) > 1  # shuffled
    assert tag_variants(caption, cfg, "a.png")[0] == variants  # seeded: the same every run
    assert tag_variants(caption, cfg, "b.png")[0] != variants  # and per image
    dropped, _ = tag_variants(caption, params.Tags(dropout=0.5, variants=20), "a.png")
    assert all(v.startswith("ffstyle") for v in dropped) and min(len(v.split(", ")) for v in dropped) < 5
    assert all(v.split(", ") == [t for t in caption.split(", ") if t in v.split(", ")] for v in dropped)  # no shuffle: order kept
    # Dropout may empty a caption only when nothing is kept in place: that variant keeps every tag.
    empty, emptied = tag_variants("a, b", params.Tags(keep_tokens=0, dropout=0.9, variants=20), "a.png")
    assert emptied > 0 and "a, b" in empty and "" not in empty


def test_encode_caches_variants_and_training_reads_one_an_epoch(filtered, tiny_model):
    folder = filtered / "filtered/ink"
    for name in ("red", "green", "strip"):
        (folder / f"{name}.txt").write_text(f"{name}, square, flat colour, plain")
    caption_style("ink", params.Caption(), filtered / "filtered", filtered / "captions")
    style = params.Style(source="x", trigger="inkstyle")
    base = params.Base(model=str(tiny_model), resolution=32)
    for name in ("red", "green", "strip"):  # encode@S reads images at their bucket's size: here the square
        Image.open(folder / f"{name}.png").resize((32, 32)).save(folder / f"{name}.png")
    write_jsonl(folder / "index.jsonl", [{"file_name": f"{n}.png", "bucket": [32, 32]} for n in ("red", "green", "strip")])
    cfg = params.Tags(shuffle=True, variants=3)
    encode_style("ink", style, base, filtered / "filtered", filtered / "captions", filtered / "latents", heldout=1, tags=cfg)
    cache = open_latents("ink", 32, filtered / "latents")
    (bucket, n), v = *cache.buckets.items(), cfg.variants
    assert n == 2 == len(cache)
    with safe_open(filtered / "latents/ink" / LATENTS_FILE, "pt") as f:
        assert f.get_slice(f"{bucket}/{VARIANTS}text_hidden").get_shape()[:2] == [n, v]
    assert not any(k.startswith(VARIANTS) for k in load_heldout("ink", filtered / "latents").groups()[0])  # plain captions
    # Epoch e reads variant e mod 3 of every image: the encoder's output of that shuffled caption.
    captions = [tag_variants(f"inkstyle, {Path(f).stem}, square, flat colour, plain", cfg, f)[0][4 % v] for f in cache.files]
    expected = encode_captions(load_pipeline(str(tiny_model)), captions, torch.device("cpu"))["text_hidden"]
    assert torch.allclose(cache.rows(bucket, [0, 1], variant=4)["text_hidden"], expected, atol=1e-5)
    assert not torch.allclose(cache.rows(bucket, [0, 1], variant=5)["text_hidden"], expected, atol=1e-5)
    # Training reads them: one epoch a step here (2 images, batch 2), so three steps see all three variants.
    p = params.validate({"base": base.model_dump(), "styles": {"ink": style.model_dump()}, "lora": {"rank": 2, "targets": "attn"},
                         "train": {"max_steps": 3, "batch_size": 2, "validation_prompts": ["a cat"], "validation_steps": 2}})
    run = filtered / "run"
    result = train_style("ink", p, out=run / "lora", ckpt_root=run / "ckpt", logs=run / "logs", latents=filtered / "latents")
    assert result["steps"] == 3 and torch.isfinite(torch.tensor(result["final_loss"]))


def test_readme_tag_block_is_valid_params(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in yaml.safe_load(block("tag-captions")).items():
        raw[section] |= values
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    p = params.load("caption", "tags", path=tmp_path / "params.yaml")
    assert p.caption.backend == "tags" and p.caption.tagger.exclude == ["simple background"]
    assert p.tags.active and p.tags.variants == 8
