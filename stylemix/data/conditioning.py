"""What the UNet is conditioned on, the same in encode, train and the tests: the text encoders'
hidden states for SD 1.5; for SDXL both encoders' penultimate hidden states side by side, the
second one's pooled projection, and the micro-conditioning time ids. FLUX.1's and SD 3.5's
transformers read T5's hidden states (SD 3.5: after both CLIPs') and CLIP's pooled embedding, as
their pipelines' own `encode_prompt` computes them (`flow_text`).

Captions longer than one window of a CLIP text encoder (75 tokens between its BOS and EOS) can be
read whole up to 150 or 225 tokens, as kohya's max_token_length does: the ids are cut into 75-token
chunks, each from its own BOS to an EOS, the encoder reads each chunk, and the chunks' hidden
states are joined into one sequence (one BOS, 150 or 225 tokens, one EOS); SDXL's pooled embedding
is the first chunk's.
"""
import torch

from stylemix.families import FLUX, architecture

ALL_TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")  # SD 3.5's third: T5
IDS = ("input_ids", "input_ids_2")  # one id tensor per tokenizer, in the pipeline's order
CHUNK = 75  # caption tokens a CLIP text encoder reads at once, between its BOS and EOS
VARIANTS = "variants_"  # prefix of the (images, tags.variants, ...) copies of a caption's tensors, for tag shuffling


def text_encoders(pipe) -> list:
    return [te for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if te is not None]


def tokenizers(pipe) -> list:
    return [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]


def tokenize(pipe, texts: list[str], max_tokens: int = CHUNK) -> dict[str, torch.Tensor]:
    """(texts, 77) ids per tokenizer; with `max_tokens` a multiple of 75, (texts, max_tokens / 75 x 77):
    the first `max_tokens` tokens in chunks of 75, each from BOS to EOS."""
    return {key: _chunked(t, texts, max_tokens) for key, t in zip(IDS, tokenizers(pipe))}


def _chunked(tokenizer, texts: list[str], max_tokens: int) -> torch.Tensor:
    out = tokenizer(texts, padding="max_length", max_length=max_tokens + 2, truncation=True, return_tensors="pt")
    if max_tokens == CHUNK:
        return out.input_ids
    body = out.input_ids[:, 1:-1].reshape(len(texts), -1, CHUNK)
    text = out.attention_mask[:, 1:-1].reshape(body.shape).bool()  # caption tokens (with its EOS), not padding
    # Each chunk as the tokenizer ends a caption: a chunk of padding only starts with EOS, and one
    # whose caption runs on to its last token ends with EOS; otherwise it ends in padding.
    body[:, :, 0] = torch.where(text[:, :, 0], body[:, :, 0], tokenizer.eos_token_id)
    end = torch.where(text[:, :, -1:], tokenizer.eos_token_id, tokenizer.pad_token_id)
    bos = torch.full_like(end, tokenizer.bos_token_id)
    return torch.cat([bos, body, end], dim=-1).flatten(1)


def encode_text(encoders: list, ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states, pooled or None), as diffusers' SD 1.5 and SDXL pipelines compute them; for
    chunked ids (tokenize's max_tokens over 75) each chunk's, joined."""
    b, chunks = ids[0].shape[0], ids[0].shape[-1] // (CHUNK + 2)
    ids = [x.reshape(b * chunks, CHUNK + 2) for x in ids]
    if len(encoders) == 1:
        hidden, pooled = encoders[0](ids[0])[0], None
    else:
        parts = []
        for encoder, x in zip(encoders, ids):
            out = encoder(x, output_hidden_states=True)
            parts.append(out.hidden_states[-2])
        hidden, pooled = torch.cat(parts, dim=-1), out.text_embeds[::chunks]  # pooled: the last encoder's, first chunk's
    if chunks == 1:
        return hidden, pooled
    hidden = hidden.view(b, chunks, CHUNK + 2, -1)
    return torch.cat([hidden[:, 0, :1], hidden[:, :, 1:-1].flatten(1, 2), hidden[:, -1, -1:]], dim=1), pooled


def flow_text(pipe, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states, pooled) of a FLUX.1 or SD 3.5 pipeline's text encoders, by its own encode_prompt
    (T5 at the pipeline's default length: 512 tokens for FLUX.1, 256 for SD 3.5)."""
    if architecture(pipe) == FLUX:
        hidden, pooled, _ = pipe.encode_prompt(prompt=texts, prompt_2=None, device=device)
    else:
        hidden, _, pooled, _ = pipe.encode_prompt(prompt=texts, prompt_2=None, prompt_3=None, device=device,
                                                  do_classifier_free_guidance=False)
    return hidden, pooled


def time_ids(records: list[dict]) -> torch.Tensor:
    """SDXL's (original h, w, crop top, left, target h, w) per filtered image, from the filter's index
    (original_size and bucket are PIL's (w, h); the crop is in the scaled image, as SDXL was trained).
    The mirrored copy uses the same crop: a center crop is symmetric to within a pixel."""
    return torch.tensor([[r["original_size"][1], r["original_size"][0], *r["crop_top_left"], r["bucket"][1], r["bucket"][0]]
                         for r in records], dtype=torch.float32)


def unet_kwargs(pooled: torch.Tensor | None, times: torch.Tensor | None) -> dict:
    """The UNet's extra inputs: none for SD 1.5, SDXL's added conditioning otherwise."""
    if pooled is None:
        return {}
    return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": times.to(pooled.dtype)}}
