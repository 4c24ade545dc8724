"""Generation (prompts, seeds, PNG metadata) and scoring (checked against a hand computation)."""
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from stages.generate import generate_model
from stages.report import strength_grid
from stylemix import params
from stylemix.data.prompts import triggered
from stylemix.evaluation.scoring import bootstrap, embed_images, score_images, summarize
from stylemix.models.base_model import load_pipeline
from tests.test_merge import random_lora

GEN = params.Generate(prompts=["a cat", "a house"], seeds=[0, 3], steps=2, negative_prompt="blurry")
BASE = params.Base(model="tiny", resolution=32)


def test_triggers_in_prompts():
    assert triggered("a cat", {"trigger": "omstyle", "template": "{trigger}, {caption}"}) == "omstyle, a cat"
    assert triggered("a cat", {"triggers": {"a": "omstyle", "b": "ffstyle"}}) == "omstyle, ffstyle, a cat"


def test_generate_writes_every_prompt_and_seed_with_metadata(tmp_path, tiny_model):
    (tmp_path / "ink").mkdir()
    random_lora(tiny_model, tmp_path / "ink", rank=4, alpha=4, text_encoder=False, seed=0)
    pipe = load_pipeline(str(tiny_model))
    for model, lora in (("base", None), ("ink", tmp_path / "ink"), ("base_again", None)):
        (tmp_path / model / "out").mkdir(parents=True)
        assert generate_model(pipe, model, lora, GEN, BASE, tmp_path / model / "out") == 4
    files = sorted(p.name for p in (tmp_path / "ink/out").iterdir())
    assert files == ["p0_s0.png", "p0_s3.png", "p1_s0.png", "p1_s3.png"]
    image = Image.open(tmp_path / "ink/out/p1_s3.png")
    assert image.size == (32, 32)
    assert image.text["prompt"] == "inkstyle, a house" and image.text["base_prompt"] == "a house"
    assert image.text["seed"] == "3" and image.text["model"] == "ink" and "Negative prompt: blurry" in image.text["parameters"]
    same = [np.asarray(Image.open(tmp_path / m / "out/p0_s0.png")) for m in ("base", "base_again")]
    assert np.array_equal(*same)  # same seed, same model: same picture (the LoRA was unloaded)
    assert not np.array_equal(same[0], np.asarray(Image.open(tmp_path / "ink/out/p0_s0.png")))



def test_a_lora_is_drawn_at_each_strength_and_the_report_grids_them(tmp_path, tiny_model):
    """generate.strengths: each prompt again at each other weight (first seed), the weight in the
    PNG; 1 is the scored image itself, and a weight changes the picture between the base and 1."""
    (tmp_path / "ink").mkdir()
    random_lora(tiny_model, tmp_path / "ink", rank=4, alpha=4, text_encoder=False, seed=0)
    pipe = load_pipeline(str(tiny_model))
    cfg = GEN.model_copy(update={"strengths": [1.0, 0.5, 1.5]})
    for model, lora in (("base", None), ("ink", tmp_path / "ink")):
        (tmp_path / "images" / model).mkdir(parents=True)
        assert generate_model(pipe, model, lora, cfg, BASE, tmp_path / "images" / model) == (4 if lora is None else 4 + 2 * 2)
    assert sorted(p.name for p in (tmp_path / "images/ink/strengths").iterdir()) == [
        "w0.5_p0_s0.png", "w0.5_p1_s0.png", "w1.5_p0_s0.png", "w1.5_p1_s0.png"]
    half = Image.open(tmp_path / "images/ink/strengths/w0.5_p1_s0.png")
    assert half.text["strength"] == "0.5" and "Lora: ink:0.5" in half.text["parameters"]
    assert Image.open(tmp_path / "images/ink/p1_s0.png").text["strength"] == "1"
    pixels = {w: np.asarray(Image.open(tmp_path / "images" / f)).astype(float) for w, f in (
        (0, "base/p1_s0.png"), (0.5, "ink/strengths/w0.5_p1_s0.png"), (1, "ink/p1_s0.png"), (1.5, "ink/strengths/w1.5_p1_s0.png"))}
    moved = [np.abs(pixels[w] - pixels[0]).mean() for w in (0.5, 1, 1.5)]
    assert 0 < moved[0] < moved[1] < moved[2], moved
    (tmp_path / "grids").mkdir()
    assert strength_grid(["base", "ink"], tmp_path / "grids", tmp_path / "images") == [
        ("strengths.png", "every style and combination at each strength")]
    assert Image.open(tmp_path / "grids/strengths.png").size == (150 + 2 * 128, 34 + 22 + 4 * 128)  # base, ink 0.5 / 1 / 1.5
    assert strength_grid(["base"], tmp_path / "grids", tmp_path / "images") == []  # nothing drawn at other strengths


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    """A fixed tiny open_clip model (random weights, seed 0), registered like any architecture."""
    config = tmp_path_factory.mktemp("clip") / "tiny-clip.json"
    config.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
                                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}))
    open_clip.add_model_config(config)
    from stylemix.evaluation.scoring import load_scorer

    return load_scorer(params.Score(clip_model="tiny-clip"))


def test_an_untrained_scorer_is_the_same_network_every_run(scorer):
    from stylemix.evaluation.scoring import load_scorer

    torch.manual_seed(123)  # whatever ran before
    again = load_scorer(params.Score(clip_model="tiny-clip"))[0].state_dict()
    assert all(torch.equal(v, again[k]) for k, v in scorer[0].state_dict().items())


def solid(colour, noise_seed):
    rng = np.random.default_rng(noise_seed)
    base = np.array(Image.new("RGB", (32, 32), colour), dtype=np.int16)
    return Image.fromarray(np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8))


def test_clip_score_equals_a_hand_computation(scorer, tmp_path):
    prompts = ["a red square", "a green field", "a blue sky"]
    for i, (colour, prompt) in enumerate(zip(("red", "green", "blue"), prompts)):
        (tmp_path / "images/m").mkdir(parents=True, exist_ok=True)
        img = solid(colour, i)
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("base_prompt", prompt)
        info.add_text("seed", str(i))
        img.save(tmp_path / f"images/m/p{i}_s{i}.png", pnginfo=info)
        (tmp_path / "filtered/red").mkdir(parents=True, exist_ok=True)
        solid("red", 10 + i).save(tmp_path / f"filtered/red/{i}.png")
    scores, embeddings = score_images(scorer, ["m"], ["red"], tmp_path / "images", tmp_path / "filtered")
    assert embeddings.shape == (3, 32)
    model, preprocess, tokenizer = scorer
    with torch.no_grad():  # written out: CLIP image and text embeddings, normalized, dot product
        for i, row in scores.iterrows():
            image = model.encode_image(preprocess(Image.open(tmp_path / f"images/m/{row['file']}").convert("RGB"))[None])[0]
            text = model.encode_text(tokenizer([prompts[i]]))[0]
            assert row["clip_score"] == pytest.approx(float(image @ text / image.norm() / text.norm()), abs=1e-5)
    stats = summarize(scores, ["red"], params.Score(clip_model="tiny-clip"))["models"]["m"]["clip_score"]
    assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"]
    assert stats["mean"] == pytest.approx(scores["clip_score"].mean())


def test_bootstrap_interval():
    stats = bootstrap([0.1, 0.2, 0.3, 0.4, 0.5] * 4)
    assert stats["mean"] == pytest.approx(0.3) and 0.2 < stats["ci_low"] < 0.3 < stats["ci_high"] < 0.4


def test_own_style_images_are_most_similar_to_their_style(scorer, tmp_path):
    from stages.filter import filter_style
    from stylemix.demo.sample import build_style
    from stylemix.evaluation.scoring import style_reference
    from stylemix.images import load_rgb

    refs, own = {}, {}
    for style in ("flat", "lineart", "openmoji"):
        (tmp_path / style).mkdir()
        build_style(style, tmp_path / style, count=6, seed=0)
        filter_style(style, params.Style(source=str(tmp_path / style), trigger=style), params.Filter(), params.Base(resolution=32),
                     tmp_path / "filtered", tmp_path / "reports")
        refs[style] = style_reference(scorer, tmp_path / "filtered" / style)
        own[style] = embed_images(scorer, [load_rgb(p) for p in sorted((tmp_path / "filtered" / style).glob("*.png"))])
    for style, emb in own.items():
        sims = {s: float((emb @ ref).mean()) for s, ref in refs.items()}
        assert max(sims, key=sims.get) == style, sims


def test_a_batch_draws_the_pictures_drawn_one_at_a_time(tmp_path, tiny_model):
    """generate.batch_size: each image of a batch starts from its own seed, so a batch of 4 draws the
    pictures (and metadata) drawn one at a time, float rounding apart; a batch never mixes strengths."""
    (tmp_path / "ink").mkdir()
    random_lora(tiny_model, tmp_path / "ink", rank=4, alpha=4, text_encoder=False, seed=0)
    pipe = load_pipeline(str(tiny_model))
    cfg = GEN.model_copy(update={"prompts": ["a cat", "a house", "a tree"], "strengths": [1.0, 0.5]})
    for size in (1, 4):
        (tmp_path / f"by{size}").mkdir()
        assert generate_model(pipe, "ink", tmp_path / "ink", cfg.model_copy(update={"batch_size": size}), BASE,
                              tmp_path / f"by{size}") == 6 + 3
    names = sorted(str(p.relative_to(tmp_path / "by1")) for p in (tmp_path / "by1").rglob("*.png"))
    assert names == sorted(str(p.relative_to(tmp_path / "by4")) for p in (tmp_path / "by4").rglob("*.png"))
    for name in names:
        one, four = Image.open(tmp_path / "by1" / name), Image.open(tmp_path / "by4" / name)
        assert one.text == four.text
        assert np.abs(np.asarray(one, dtype=float) - np.asarray(four, dtype=float)).max() <= 2, name
    pictures = {name: np.asarray(Image.open(tmp_path / "by4" / name), dtype=float) for name in ("p2_s0.png", "p2_s3.png",
                                                                                                 "strengths/w0.5_p2_s0.png")}
    assert np.abs(pictures["p2_s0.png"] - pictures["p2_s3.png"]).mean() > 1  # seeds differ within a batch
    assert np.abs(pictures["p2_s0.png"] - pictures["strengths/w0.5_p2_s0.png"]).mean() > 1  # and strengths between


def test_the_ground_truth_equals_a_hand_computation(scorer, tmp_path):
    """stylemix.evaluation.ground_truth on a truth folder of two looks x three subjects and three models' pictures:
    each picture's nearest look (the mean of the looks' real pictures), nearest subject name and cosine
    to its subject's real picture in each look, written out; the matrix, accuracies and nearness from them."""
    from PIL.PngImagePlugin import PngInfo

    from stylemix.evaluation import ground_truth

    looks, subjects = {"red": "red", "blue": "blue"}, ["a cat", "a house", "a tree"]
    for look, colour in looks.items():
        (tmp_path / "truth" / look).mkdir(parents=True)
        for i, subject in enumerate(subjects):
            solid(colour, 100 + i).save(tmp_path / "truth" / look / f"s{i}.png")
            (tmp_path / "truth" / look / f"s{i}.txt").write_text(subject + "\n")
    (tmp_path / "filtered/red").mkdir(parents=True)
    solid("red", 7).save(tmp_path / "filtered/red/0.png")
    colours = {"base": ["blue", "red", "blue"], "red": ["red", "red", "blue"], "other": ["green", "green", "green"]}
    for model, drawn in colours.items():
        (tmp_path / "images" / model).mkdir(parents=True)
        for i, (subject, colour) in enumerate(zip(subjects + ["not held out"], drawn + ["red"])):
            info = PngInfo()
            info.add_text("base_prompt", subject)
            solid(colour, 10 * i + len(model)).save(tmp_path / "images" / model / f"p{i}_s0.png", pnginfo=info)
    truth = ground_truth.load_truth(tmp_path / "truth")
    assert truth.looks == ["blue", "red"] and truth.captions == subjects
    scores, embeddings = score_images(scorer, list(colours), ["red"], tmp_path / "images", tmp_path / "filtered")
    judged = ground_truth.judge(scores, embeddings, truth, scorer)
    assert len(judged) == 9 and "not held out" not in set(judged["prompt"])
    real = {look: embed_images(scorer, [Image.open(p).convert("RGB") for p in truth.files[look]]) for look in truth.looks}
    centroid = {look: torch.nn.functional.normalize(e.mean(0), dim=0) for look, e in real.items()}
    model, _, tokenizer = scorer
    with torch.no_grad():
        names = torch.nn.functional.normalize(model.encode_text(tokenizer(subjects)), dim=-1)
    for _, row in judged.iterrows():
        emb = embed_images(scorer, [Image.open(tmp_path / "images" / row["model"] / row["file"]).convert("RGB")])[0]
        assert row["look_pred"] == max(truth.looks, key=lambda look: float(emb @ centroid[look]))
        assert row["subject_pred"] == subjects[int((names @ emb).argmax())]
        k = subjects.index(row["prompt"])
        for look in truth.looks:
            assert row[f"truth_sim_{look}"] == pytest.approx(float(emb @ real[look][k]), abs=1e-5)
    metrics = ground_truth.summarize(judged, truth)
    for name in colours:
        rows = judged[judged["model"] == name]
        assert metrics["style_accuracy"][name] == {look: pytest.approx((rows["look_pred"] == look).mean()) for look in truth.looks}
        assert metrics["models"][name]["subject_accuracy"]["mean"] == pytest.approx((rows["subject_pred"] == rows["prompt"]).mean())
    red = metrics["models"]["red"]  # a style whose name is a truth look: judged in it, against the base
    assert red["look"] == "red" and metrics["models"]["base"]["look"] is None and "nearness" not in metrics["models"]["other"]
    assert red["style_accuracy"]["mean"] == pytest.approx(metrics["style_accuracy"]["red"]["red"])
    assert red["style_accuracy_base"] == pytest.approx(metrics["style_accuracy"]["base"]["red"])
    base_rows = judged[judged["model"] == "base"]
    assert red["nearness_base"] == pytest.approx(base_rows["truth_sim_red"].mean())
    assert red["nearness_gain"] == pytest.approx(red["nearness"]["mean"] - red["nearness_base"])
    assert metrics["chance"] == {"style": 0.5, "subject": pytest.approx(1 / 3)}


def test_the_report_and_the_ui_show_one_scores_table(tmp_path):
    """stylemix.evaluation.score_table is the one formatter: the UI's table is the report's, without the bold."""
    from stages.report import metrics_table as report_table
    from stylemix.commands.ui_tables import metrics_table as ui_table

    stat = lambda mean: {"mean": mean, "ci_low": mean - 0.01, "ci_high": mean + 0.01}  # noqa: E731
    metrics = {"models": {"base": {"clip_score": stat(0.3), "style_similarity": {"a": stat(0.5), "b": stat(0.4)}},
                          "a": {"clip_score": stat(0.2), "style_similarity": {"a": stat(0.7), "b": stat(0.45)}, "style_gain_over_base": 0.2},
                          "ab": {"clip_score": stat(0.25), "style_similarity": {"a": stat(0.6), "b": stat(0.5)}, "style_gain_over_base": 0.1}}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    ui = ui_table(tmp_path / "metrics.json")
    assert list(ui.columns) == ["model", "CLIP score [95% CI]", "style similarity: a", "style similarity: b", "gain over base"]
    assert ui.values.tolist() == [["base", "0.3000 [0.290, 0.310]", "0.5000 [0.490, 0.510]", "0.4000 [0.390, 0.410]", ""],
                                  ["a", "0.2000 [0.190, 0.210]", "0.7000 [0.690, 0.710]", "0.4500 [0.440, 0.460]", "+0.2000"],
                                  ["ab", "0.2500 [0.240, 0.260]", "0.6000 [0.590, 0.610]", "0.5000 [0.490, 0.510]", "+0.1000"]]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in report_table(metrics, {"ab": params.Combo(weights={"a": 0.5, "b": 0.5})}).splitlines()]
    assert rows[0] == list(ui.columns) and len(rows) == 5  # header, rule, three models
    bold = [[cell.startswith("**") for cell in row[2:4]] for row in rows[2:]]
    assert bold == [[False, False], [True, False], [True, True]]  # own style; a combination's components
    assert [[cell.strip("*") for cell in row] for row in rows[2:]] == ui.values.tolist()
