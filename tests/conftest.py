"""Shared fixtures. Tests never touch the network: the hub is offline before anything imports it."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two test processes on the CPU: one thread each,
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the stages they start (two threads each would oversubscribe)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access tried: {args[1:] or kwargs}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny SD model, built once per session into a temp dir."""
    from stylemix.models.base_model import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    """A randomly initialised BLIP with a made-up BERT vocabulary, saved like a hub model:
    its captions are gibberish, but they travel the real from_pretrained/generate path."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("blip")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + "a the cat of in on painting photo lineart".split()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer).save_pretrained(folder)
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = BlipConfig(
        text_config=small | dict(vocab_size=len(words), max_position_embeddings=64,
                                 bos_token_id=5, sep_token_id=3, eos_token_id=3, pad_token_id=0),
        vision_config=small | dict(image_size=32, patch_size=8),
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    return folder
