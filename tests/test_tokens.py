"""New concept tokens trained with a LoRA: only the new rows train, both file formats load back
through diffusers, generation and merging carry them."""
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from stages.caption import caption_style
from stages.encode import encode_style
from stages.filter import filter_style
from stages.generate import generate_model
from stages.report import token_grids
from stylemix import params
from stylemix.adapters.loading import read_info
from stylemix.adapters.tokens import load_tokens
from stylemix.data.conditioning import text_encoders, tokenizers
from stylemix.demo.sample import FRAMINGS, build_style
from stylemix.errors import StyleMixError
from stylemix.mixing.merging import merge_combo
from stylemix.models.base_model import build_tiny, load_pipeline
from stylemix.training.loop import train_style
from tests.test_merge import random_lora
from tests.test_train import launch_two_processes, prepare

RESOLUTION = 32
TOKENS = {"<cu_trg>": "close-up", "<ms_trg>": "medium shot", "<fs_trg>": "full shot"}
PROMPT = "lastyle, <cu_trg>, a cat"


def make_params(model, source) -> params.Params:
    return params.validate({
        "base": {"model": str(model), "resolution": RESOLUTION},
        "styles": {"lineart": {"source": str(source), "trigger": "lastyle", "tokens": TOKENS}},
        "lora": {"rank": 4, "alpha": 4, "targets": "attn"},
        "train": {"max_steps": 4, "batch_size": 2, "lr": 1e-2, "token_lr": 5e-2, "checkpoint_every": 4,
                  "validation_steps": 2, "validation_prompts": ["<ms_trg>, a cat"]},
    })


def trained_lineart(root, model) -> dict:
    """The demo's framed lineart style (6 images), filtered, captioned, encoded and trained."""
    (root / "src").mkdir()
    build_style("lineart", root / "src", count=6, seed=0)
    p = make_params(model, root / "src")
    prepare("lineart", root, p)
    return train_style("lineart", p, out=root / "lora", ckpt_root=root / "ckpt", logs=root / "logs", latents=root / "latents")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("tokens")
    return root, trained_lineart(root, tiny_model)


def hidden(pipe, text: str) -> list[torch.Tensor]:
    with torch.no_grad():
        return [encoder(tok(text, padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
                for tok, encoder in zip(tokenizers(pipe), text_encoders(pipe))]


def test_the_demo_captions_use_the_tokens_params_declare():
    demo = params.load("styles")
    assert set(FRAMINGS) == set(demo.styles["lineart"].tokens)


def test_a_resumed_training_reports_the_base_loss_with_the_tokens_at_their_start(tmp_path, tiny_model):
    """The base's held-out loss is the base model's, new tokens as they started: a rerun that resumes
    from the final checkpoint (dvc repro after a dependency changed) reports the same as the first run."""
    (tmp_path / "src").mkdir()
    build_style("lineart", tmp_path / "src", count=6, seed=0)
    p = make_params(tiny_model, tmp_path / "src")
    filter_style("lineart", p.styles["lineart"], params.Filter(), p.base, tmp_path / "filtered", tmp_path / "reports")
    caption_style("lineart", params.Caption(), tmp_path / "filtered", tmp_path / "captions")
    encode_style("lineart", p.styles["lineart"], p.base, tmp_path / "filtered", tmp_path / "captions", tmp_path / "latents", heldout=2)
    runs = [train_style("lineart", p, out=tmp_path / "lora", ckpt_root=tmp_path / "ckpt", logs=tmp_path / "logs",
                        latents=tmp_path / "latents") for _ in range(2)]
    assert runs[0]["val_loss_base"] == runs[1]["val_loss_base"] and runs[0]["val_loss"] == runs[1]["val_loss"]
    assert runs[0]["val_loss"] != runs[0]["val_loss_base"]


def test_only_the_new_rows_train(trained, tiny_model):
    _, result = trained
    base = load_pipeline(str(tiny_model)).text_encoder.get_input_embeddings().weight
    table = result["pipe"].text_encoder.get_input_embeddings()
    assert torch.equal(table.old.weight, base)  # every existing token: bit-identical
    assert table.new.shape == (3, base.shape[1])
    ids = result["pipe"].tokenizer("close-up", add_special_tokens=False).input_ids
    assert (table.new[0].detach() - base[ids].mean(0)).abs().max() > 1e-3  # moved from its start
    assert [k for k in result["trainables"] if not k.startswith("unet.")] == ["text_encoder.embeddings.token_embedding.new"]


def test_tokens_load_back_through_diffusers_in_both_formats(trained, tiny_model):
    root, result = trained
    folder = root / "lora/lineart"
    expected = hidden(result["pipe"], PROMPT)
    base = load_pipeline(str(tiny_model))
    before = base.tokenizer("a close-up of a cat, full shot").input_ids
    vocab = len(base.tokenizer)
    base.load_lora_weights(folder)
    load_tokens(base, folder, list(read_info(folder)["tokens"]))
    assert base.tokenizer.convert_tokens_to_ids(list(TOKENS)) == [vocab, vocab + 1, vocab + 2]
    assert base.tokenizer("<ms_trg> a cat").input_ids[1] == vocab + 1
    assert base.tokenizer("a close-up of a cat, full shot").input_ids == before
    assert torch.allclose(hidden(base, PROMPT)[0], expected[0], atol=1e-5)
    # The A1111 embedding, through diffusers too (it names no token: the file name is the word).
    a1111 = load_pipeline(str(tiny_model))
    a1111.load_textual_inversion(str(folder / "embeddings/cu_trg.safetensors"), token="<cu_trg>")
    assert torch.equal(a1111.text_encoder.get_input_embeddings().weight[-1], base.text_encoder.get_input_embeddings().weight[vocab])
    assert list(load_file(folder / "tokens/cu_trg.safetensors")) == ["<cu_trg>"]
    card = (folder / "README.md").read_text()
    assert "<cu_trg>" in card and "close-up" in card and "embeddings/fs_trg.safetensors" in card


def test_generation_draws_each_token_and_the_report_grids_them(trained, tiny_model, tmp_path):
    root, _ = trained
    gen = params.Generate(prompts=["a cat", "a house"], seeds=[0, 1], steps=2)
    pipe = load_pipeline(str(tiny_model))
    (tmp_path / "images/lineart").mkdir(parents=True)
    assert generate_model(pipe, "lineart", root / "lora/lineart", gen, params.Base(model="tiny", resolution=RESOLUTION),
                          tmp_path / "images/lineart") == 4 + 3 * 2
    image = Image.open(tmp_path / "images/lineart/tokens/t2_p1_s0.png")
    assert image.text["token"] == "<fs_trg>" and image.text["prompt"] == "lastyle, <fs_trg>, a house"
    assert "<cu_trg>" not in pipe.tokenizer.get_vocab()  # unloaded with the LoRA
    (tmp_path / "grids").mkdir()
    assert token_grids(["base", "lineart"], tmp_path / "grids", tmp_path / "images") == [
        ("tokens_lineart.png", "lineart: the same prompts at each new token")]
    assert Image.open(tmp_path / "grids/tokens_lineart.png").size == (150 + 2 * 128, 34 + 22 + 3 * 128)


def test_the_drawer_keeps_a_styles_tokens_loaded_only_while_it_draws_that_style(trained, tiny_model):
    """Loading tokens rebuilds the tokenizer, so the drawer keeps them between drawings of the same
    styles; a drawing without the style has them gone, one with it again has them back."""
    from stylemix.drawing.drawer import Drawer

    root, _ = trained
    drawer = Drawer(params.Base(model=str(tiny_model), resolution=RESOLUTION), roots=(root / "lora",))
    gen = params.Generate(steps=2)
    first, _ = drawer.draw("<cu_trg>, a cat", {"lineart": 1.0}, 0, gen)
    assert "<cu_trg>" in drawer.pipe.tokenizer.get_vocab()
    drawer.draw("<cu_trg>, a cat", {}, 0, gen)
    assert "<cu_trg>" not in drawer.pipe.tokenizer.get_vocab()
    drawer.draw("a cat", {"lineart": 0.0}, 0, gen, triggers=["lineart"])  # not drawn, yet its trigger (and tokens) go in
    assert "<cu_trg>" in drawer.pipe.tokenizer.get_vocab()
    again, _ = drawer.draw("<cu_trg>, a cat", {"lineart": 1.0}, 0, gen)
    assert list(first.getdata()) == list(again.getdata())  # the same tokens, the same picture


def test_a_merge_keeps_the_tokens_and_refuses_two_owners(trained, tiny_model, tmp_path):
    root, _ = trained
    (root / "lora/ink").mkdir(exist_ok=True)
    random_lora(tiny_model, root / "lora/ink", rank=2, alpha=2, text_encoder=False, seed=1, base_model=str(tiny_model))
    info = merge_combo("mix", params.Combo(weights={"lineart": 0.5, "ink": 0.5}), root / "lora", tmp_path)
    assert info["tokens"] == TOKENS
    for name in ("tokens/cu_trg.safetensors", "embeddings/ms_trg.safetensors"):
        assert (tmp_path / "mix" / name).read_bytes() == (root / "lora/lineart" / name).read_bytes()
    # A second style with one of the same tokens.
    (root / "lora/storyboard").mkdir(exist_ok=True)
    for path in (root / "lora/lineart").rglob("*"):
        target = root / "lora/storyboard" / path.relative_to(root / "lora/lineart")
        target.mkdir(exist_ok=True) if path.is_dir() else target.write_bytes(path.read_bytes())
    with pytest.raises(StyleMixError, match=r"merge.combos.mix2: styles lineart and storyboard both define token <cu_trg>"):
        merge_combo("mix2", params.Combo(weights={"lineart": 0.5, "storyboard": 0.5}), root / "lora", tmp_path)


def test_two_cpu_processes_train_the_tokens(trained, tiny_model, tmp_path):
    root, _ = trained
    log = launch_two_processes(tmp_path, root / "latents", make_params(tiny_model, root / "src"), "lineart")
    assert log.count("train lineart: 4 of 4 steps") == 1
    fresh = load_pipeline(str(tiny_model))
    load_tokens(fresh, tmp_path / "models/lora/lineart", list(TOKENS))
    assert len(fresh.tokenizer) == len(load_pipeline(str(tiny_model)).tokenizer) + 3


@pytest.mark.parametrize(("tokens", "expected"), [
    ({"cu_trg": "close-up"}, r"styles.lineart.tokens: token 'cu_trg' must be written <name>"),
    ({"<cu_trg>": " "}, r"styles.lineart.tokens: token <cu_trg>: give a word or phrase"),
])
def test_bad_tokens_are_one_clear_line(tokens, expected):
    with pytest.raises(StyleMixError, match=expected):
        params.validate({"styles": {"lineart": {"source": "x", "trigger": "lastyle", "tokens": tokens}}})


def test_a_token_the_base_model_knows_is_refused(tiny_model):
    from stylemix.adapters.tokens import add_tokens

    pipe = load_pipeline(str(tiny_model))
    pipe.tokenizer.add_tokens(["<cu_trg>"])
    with pytest.raises(StyleMixError, match=r"styles.lineart.tokens: <cu_trg> already in the base model's vocabulary"):
        add_tokens(pipe, {"<cu_trg>": "close-up"}, "lineart")


def test_sdxl_tokens_train_on_both_text_encoders_and_load_back(tmp_path):
    model = build_tiny(tmp_path / "tiny-sdxl", sdxl=True)
    result = trained_lineart(tmp_path, model)
    folder = tmp_path / "lora/lineart"
    expected = hidden(result["pipe"], PROMPT)
    fresh = load_pipeline(str(model))
    fresh.load_lora_weights(folder)
    load_tokens(fresh, folder, list(TOKENS))
    got = hidden(fresh, PROMPT)
    assert len(got) == 2 and all(torch.allclose(g, e, atol=1e-5) for g, e in zip(got, expected))
    assert sorted(load_file(folder / "embeddings/cu_trg.safetensors")) == ["clip_g", "clip_l"]
