"""Base models: the one loading path for hub ids, local diffusers folders, single-file
checkpoints and `tiny`, and the builder of `tiny` itself.

`tiny` is a small Stable Diffusion (UNet, VAE with the real 8x downsampling, CLIP text encoder,
SD 1.5's noise schedule) built from configs with a fixed seed and saved as an ordinary diffusers
folder, so the demo and the tests go through exactly the code a real model does. Its tokenizer
is the real CLIP BPE, derived from the vocabulary open_clip ships.
"""
import json
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, DiffusionPipeline, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from huggingface_hub import constants as hub_constants
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from stages import gpu
from stages.errors import StyleMixError
from stages.params import model_kind

# Our own progress bars and messages say what happens; the libraries' would repeat it.
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

BASE_DIR = Path("models/base")  # the base stage's output: `tiny` itself, and source.json for any model
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device() -> torch.device:
    """CUDA when there is a GPU (one of its own when several stages share several GPUs), else the CPU."""
    gpu.claim()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def clip_tokenizer() -> CLIPTokenizer:
    """CLIP's tokenizer from open_clip's BPE file: the same ids as SD 1.5's tokenizer."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    # open_clip names the special tokens differently from CLIP's own (and SD's) vocab.json.
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(token, token): i for token, i in bpe.encoder.items()}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny(path: Path | str, seed: int = 0) -> Path:
    """Build the tiny SD-architecture model and save it as a diffusers folder at `path`."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32, 32),  # four blocks: the real 8x downsampling
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, projection_dim=32,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    scheduler = PNDMScheduler(  # SD 1.5's scheduler config
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def _not_found(model: str, kind: str, err: Exception) -> StyleMixError:
    if kind == "hub":
        offline = " HF_HUB_OFFLINE is set, so nothing was downloaded;" if hub_constants.HF_HUB_OFFLINE else ""
        where = f"on disk and in the Hugging Face cache ({hub_constants.HF_HUB_CACHE})"
        return StyleMixError(
            f"base.model = {model!r}: not found {where}.{offline} download it once with network "
            f"(`hf download {model}`) or point base.model at a local folder ({type(err).__name__})"
        )
    return StyleMixError(f"base.model = {model!r}: cannot load from {Path(model).resolve()} ({err})")


def load_pipeline(model: str, revision: str | None = None, dtype: str = "float32") -> DiffusionPipeline:
    """Load any kind of base model as a diffusers pipeline (safety checker off)."""
    kind = model_kind(model)
    torch_dtype = DTYPES[dtype]
    if kind == "tiny":
        if not (BASE_DIR / "model_index.json").is_file():
            raise StyleMixError(f"base.model = 'tiny': {BASE_DIR}/ holds no model yet; run `dvc repro base`")
        model, kind = str(BASE_DIR), "local"
    if kind == "single_file" and not Path(model).is_file():
        raise StyleMixError(f"base.model = {model!r}: no such file ({Path(model).resolve()})")
    try:
        if kind == "single_file":
            return StableDiffusionPipeline.from_single_file(model, dtype=torch_dtype, safety_checker=None)
        return DiffusionPipeline.from_pretrained(
            model, revision=revision, dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as err:
        raise _not_found(model, kind, err) from None


def identity(model: str, revision: str | None) -> dict:
    """What pins the base model's weights: recorded by the base stage so that downstream stages
    rerun when the model behind the same name changes (a hub revision moving, a file replaced)."""
    kind = model_kind(model)
    if kind == "hub":
        try:
            folder = Path(DiffusionPipeline.download(model, revision=revision))
        except OSError as err:
            raise _not_found(model, kind, err) from None
        return {"kind": kind, "model": model, "revision": revision, "commit": folder.name}
    if kind == "single_file":
        path = Path(model)
        if not path.is_file():
            raise StyleMixError(f"base.model = {model!r}: no such file ({path.resolve()})")
        stat = path.stat()
        return {"kind": kind, "model": model, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if kind == "local":
        files = {str(p.relative_to(model)): p.stat().st_size for p in sorted(Path(model).rglob("*")) if p.is_file()}
        return {"kind": kind, "model": model, "files": files}
    return {"kind": kind, "model": model}


def pinned_source(model: str, revision: str | None) -> dict:
    """What the base stage recorded for this model, else its name: part of training's fingerprint."""
    path = BASE_DIR / "source.json"
    if path.is_file() and (source := json.loads(path.read_text())).get("model") == model:
        return source
    return {"model": model, "revision": revision}
