import hashlib

import open_clip
import pytest
import torch

from stylemix.base_model import build_tiny, clip_tokenizer, identity, load_pipeline
from stylemix.errors import StyleMixError

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
