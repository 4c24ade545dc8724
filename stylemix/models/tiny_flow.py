"""`tiny-flux` and `tiny-sd3`: FLUX.1's and SD 3.5's shapes in small, for the demo-sized tests, as
`tiny-sdxl` is SDXL's. Built from configs with a fixed seed, untrained, and saved as ordinary
diffusers folders, so they load through the same `from_pretrained` as the real models:

- tiny-flux: double- and single-stream blocks, the guidance embedding (FLUX.1 [dev]'s), rotary
  position axes, CLIP's pooled text and T5's hidden states, a 16-channel VAE with FLUX's shift and
  scale, and FLUX's resolution-dependent (dynamic) schedule shift;
- tiny-sd3: SD 3.5's MMDiT with a dual-attention layer (MMDiT-X) and RMS-normed queries and keys, two
  CLIP encoders side by side beside T5 in one sequence, both pooled embeddings, the static shift 3.

T5's tokenizer is a sentencepiece (Unigram) vocabulary; the real one is not in any package this
project may fetch, so the tiny models' is made from the CLIP BPE vocabulary open_clip ships, written
as sentencepiece pieces. Real models bring their own.
"""
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast

from stylemix.families import FLUX, SD3


def t5_tokenizer() -> T5TokenizerFast:
    """A T5 tokenizer (Unigram, `</s>` after each text, `<pad>` as 0) over CLIP's BPE vocabulary."""
    from open_clip.tokenizer import SimpleTokenizer

    pieces: dict[str, float] = {}
    for token, i in SimpleTokenizer().encoder.items():
        if not token.startswith("<"):  # a word-final BPE token is a word-initial sentencepiece
            piece = "▁" + token.removesuffix("</w>") if token.endswith("</w>") else token
            pieces.setdefault(piece, -10.0 - i / 100_000)  # fewest pieces first, then the BPE's order
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *sorted(pieces.items(), key=lambda kv: -kv[1])]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def _clip(width: int, cls=CLIPTextModel):
    from stylemix.models.base_model import clip_tokenizer

    model = cls(CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_attention_heads=4,
                               num_hidden_layers=2, max_position_embeddings=77, projection_dim=width,
                               bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    return model, clip_tokenizer()


def _t5(width: int, vocab: int) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=width, d_ff=2 * width, d_kv=8, num_heads=4, num_layers=2,
                                   feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=0, eos_token_id=1))


def _vae(shift: float, scale: float) -> AutoencoderKL:
    # 16 latent channels and 8x downsampling, as both families' VAEs; FLUX's has no quant convolutions.
    return AutoencoderKL(block_out_channels=(16, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, layers_per_block=1,
                         norm_num_groups=8, sample_size=128, shift_factor=shift, scaling_factor=scale,
                         use_quant_conv=False, use_post_quant_conv=False)


def build_tiny_flow(path: Path | str, arch: str, seed: int = 0) -> Path:
    """Build tiny-flux (arch FLUX) or tiny-sd3 (SD3) and save it as a diffusers folder at `path`."""
    torch.manual_seed(seed)
    t5_tok = t5_tokenizer()
    if arch == FLUX:
        transformer = FluxTransformer2DModel(in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
                                             num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                             guidance_embeds=True, axes_dims_rope=(4, 6, 6))
        clip, tokenizer = _clip(32)
        pipe = FluxPipeline(
            transformer=transformer, vae=_vae(0.1159, 0.3611), text_encoder=clip, tokenizer=tokenizer,
            text_encoder_2=_t5(32, len(t5_tok)), tokenizer_2=t5_tok,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
        )
    elif arch == SD3:
        transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                                            num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
                                            pooled_projection_dim=16 + 32, out_channels=16, pos_embed_max_size=32,
                                            dual_attention_layers=(0,), qk_norm="rms_norm")
        (clip_l, tokenizer), (clip_g, tokenizer_2) = _clip(16, CLIPTextModelWithProjection), _clip(32, CLIPTextModelWithProjection)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, vae=_vae(0.0609, 1.5305), text_encoder=clip_l, tokenizer=tokenizer,
            text_encoder_2=clip_g, tokenizer_2=tokenizer_2, text_encoder_3=_t5(64, len(t5_tok)), tokenizer_3=t5_tok,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        )
    else:
        raise ValueError(f"no tiny flow-matching model of architecture {arch!r}")
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)
