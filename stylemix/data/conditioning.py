"""What the UNet is conditioned on, the same in encode, train and the tests: the text encoders'
hidden states for SD 1.5; for SDXL both encoders' penultimate hidden states side by side, the
second one's pooled projection, and the micro-conditioning time ids."""
import torch

IDS = ("input_ids", "input_ids_2")  # one id tensor per tokenizer, in the pipeline's order
VARIANTS = "variants_"  # prefix of the (images, tags.variants, ...) copies of a caption's tensors, for tag shuffling


def text_encoders(pipe) -> list:
    return [te for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if te is not None]


def tokenizers(pipe) -> list:
    return [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]


def tokenize(pipe, texts: list[str]) -> dict[str, torch.Tensor]:
    return {key: t(texts, padding="max_length", max_length=t.model_max_length, truncation=True, return_tensors="pt").input_ids
            for key, t in zip(IDS, tokenizers(pipe))}


def encode_text(encoders: list, ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states, pooled or None), as diffusers' SD 1.5 and SDXL pipelines compute them."""
    if len(encoders) == 1:
        return encoders[0](ids[0])[0], None
    hidden = []
    for encoder, x in zip(encoders, ids):
        out = encoder(x, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), out.text_embeds  # pooled: the last (projecting) encoder's


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
