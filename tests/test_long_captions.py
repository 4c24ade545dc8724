"""Captions longer than one CLIP window (tags.max_token_length, kohya's max_token_length): read in
75-token chunks and joined; a cut caption is said once per style; the setting reaches the cache,
training and the LoRA's metadata."""
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from stages.caption import caption_style
from stages.encode import encode_style
from stylemix import params
from stylemix.adapters.lora_files import kohya_file
from stylemix.data.conditioning import encode_text, text_encoders, tokenize
from stylemix.errors import StyleMixError
from stylemix.models.base_model import build_tiny, load_pipeline
from stylemix.outputs import write_jsonl
from stylemix.training.loop import open_latents, train_style

WORDS = "red green blue yellow purple orange black white pink brown".split()
HEAD = "inkstyle, a square, " + ", ".join(f"{w} {v}" for w in WORDS for v in ("dot", "line", "star"))  # 80 tokens or so


def caption_with(pipe, tail: str) -> str:
    text = f"{HEAD}, {tail}"
    assert 75 < len(pipe.tokenizer(text).input_ids) - 2 < 150  # the tail is past the first window
    return text


@pytest.fixture(scope="module")
def sd15(tiny_model):
    return load_pipeline(str(tiny_model))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return load_pipeline(str(build_tiny(tmp_path_factory.mktemp("tiny-sdxl") / "model", sdxl=True)))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_words_past_75_tokens_reach_the_unet_only_with_a_longer_max(family, request):
    pipe = request.getfixturevalue(family)
    a, b = caption_with(pipe, "a cat on a hill"), caption_with(pipe, "a boat on the sea")
    encoders = text_encoders(pipe)
    with torch.no_grad():
        plain = encode_text(encoders, list(tokenize(pipe, [a, b]).values()))
        ids = tokenize(pipe, [a, b], 150)
        long = encode_text(encoders, list(ids.values()))
    assert torch.equal(plain[0][0], plain[0][1])  # 75 tokens: the tails are cut, so both read the same
    assert long[0].shape == (2, 152, plain[0].shape[-1])  # BOS, 150 tokens, EOS
    assert not torch.allclose(long[0][0], long[0][1])
    for x, t in zip(ids.values(), [pipe.tokenizer, getattr(pipe, "tokenizer_2", None)]):
        chunks = x.view(2, 2, 77)  # each chunk from its own BOS to an EOS; the first one's caption runs on to its end
        assert (chunks[:, :, 0] == t.bos_token_id).all() and (chunks == t.eos_token_id).any(-1).all()
        assert (chunks[:, 0, -1] == t.eos_token_id).all()
    # The first chunk is what the encoders read of a 75-token caption: the same BOS and tokens.
    assert torch.allclose(long[0][:, :76], plain[0][:, :76], atol=1e-6)
    if family == "sdxl":  # the pooled embedding is the first chunk's, as kohya's
        assert torch.allclose(long[1], plain[1], atol=1e-6)
    # A short caption at 150: its first chunk is its plain encoding; the second chunk is empty (BOS, EOS, padding).
    short = tokenize(pipe, ["inkstyle, a cat"], 150)
    assert all(torch.equal(x[:, :77], y) for x, y in zip(short.values(), tokenize(pipe, ["inkstyle, a cat"]).values()))


def test_encode_says_cut_captions_once_and_training_reads_150(tmp_path, tiny_model, sd15, capsys):
    folder = tmp_path / "filtered" / "ink"
    folder.mkdir(parents=True)
    names = ["red", "green", "blue", "pink"]
    for i, name in enumerate(names):
        Image.new("RGB", (32, 32), name).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption_with(sd15, f"a {name} cat number {i}") if i < 3 else "a pink cat")
    write_jsonl(folder / "index.jsonl", [{"file_name": f"{n}.png", "bucket": [32, 32]} for n in names])
    caption_style("ink", params.Caption(), tmp_path / "filtered", tmp_path / "captions")
    style, base = params.Style(source="x", trigger="inkstyle"), params.Base(model=str(tiny_model), resolution=32)
    encode = lambda out, **tags: encode_style("ink", style, base, tmp_path / "filtered", tmp_path / "captions", out,  # noqa: E731
                                              tags=params.Tags(**tags))
    encode(tmp_path / "cut", shuffle=True, variants=2)  # the variants are cut too, and not said again
    said = [line for line in capsys.readouterr().out.splitlines() if "longer than" in line]
    assert len(said) == 1 and "3 caption(s)" in said[0] and "tags.max_token_length: 150 reads more" in said[0]
    encode(tmp_path / "latents", max_token_length=150)
    assert "longer than" not in capsys.readouterr().out
    cache = open_latents("ink", 32, tmp_path / "latents")
    assert cache.max_token_length == 150
    assert cache.rows(next(iter(cache.buckets)), [0])["text_hidden"].shape[1] == 152
    for text_encoder in (True, False):  # the encoder reads the cached chunked ids; the frozen one's cached output is read
        p = params.validate({"base": base.model_dump(), "styles": {"ink": style.model_dump()},
                             "lora": {"rank": 2, "targets": "attn", "text_encoder": text_encoder},
                             "train": {"max_steps": 2, "batch_size": 2, "validation_prompts": ["a cat"], "validation_steps": 2}})
        run = tmp_path / f"run-{text_encoder}"
        result = train_style("ink", p, out=run / "lora", ckpt_root=run / "ckpt", logs=run / "logs", latents=tmp_path / "latents")
        assert result["steps"] == 2 and torch.isfinite(torch.tensor(result["final_loss"]))
    with safe_open(run / "lora/ink" / kohya_file("ink"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_max_token_length"] == "150" and meta["ss_optimizer"] == "adamw" and meta["ss_max_train_steps"] == "2"
    assert "Captions read up to 150 tokens" in (run / "lora/ink/README.md").read_text()


def test_a_max_token_length_kohya_has_not_is_one_line():
    with pytest.raises(StyleMixError, match=r"tags\.max_token_length.*75, 150 or 225"):
        params.validate({"tags": {"max_token_length": 100}})
