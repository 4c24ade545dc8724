"""Base models: the one loading path for hub ids, local diffusers folders, single-file
checkpoints and the tiny models, and the builder of `tiny-sdxl` (stylemix.models.tiny_flow builds
`tiny-flux` and `tiny-sd3`).

Which family (SD 1.5, SDXL, FLUX.1, SD 3.5) is never a setting: diffusers picks the pipeline from
model_index.json, a single file's keys tell which it is, and the stages ask the loaded model
(stylemix.families.architecture).

`tiny` is a small Stable Diffusion that has learned to draw the demo's emoji subjects by name in two
looks, Noto's and Twemoji's (UNet, a VAE with 4x downsampling, CLIP text encoder, SD 1.5's noise
schedule): pretrained by
`python -m stylemix.demo.pretrain` and committed in stylemix/pretrained/tiny/, copied by the base stage.
`tiny-sdxl` is SDXL's shape in small (two text encoders, pooled text and time-id conditioning),
built from configs with a fixed seed, untrained; `build_tiny` builds SD 1.5's the same way for
fast tests. All are ordinary diffusers folders, so the demo and the tests go through exactly the
code a real model does. Their tokenizers are the real CLIP BPE, derived from the vocabulary
open_clip ships.
"""
import json
import shutil
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from huggingface_hub import constants as hub_constants
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from stylemix.errors import StyleMixError
from stylemix.families import FLOW, FLUX, NAMES, PIPELINES, SD3, SD15, SDXL, architecture  # noqa: F401 (the library's names for them)
from stylemix.models import flow_files, single_file
from stylemix.params import Base, model_kind
from stylemix.paths import BASE_DIR, PRETRAINED_TINY

# Our own progress bars and messages say what happens; the libraries' would repeat it.
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def clip_tokenizer(**kwargs) -> CLIPTokenizer:
    """CLIP's tokenizer from open_clip's BPE file: the same ids as SD 1.5's tokenizer."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    # open_clip names the special tokens differently from CLIP's own (and SD's) vocab.json.
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(token, token): i for token, i in bpe.encoder.items()}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, **kwargs)


def _tiny_unet(sdxl: bool) -> UNet2DConditionModel:
    if not sdxl:
        return UNet2DConditionModel(
            sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        )
    # SDXL's shape in small: a first level without attention, linear projections, both text
    # encoders' hidden states side by side (32 + 48) and the pooled text + 6 time ids as extra input.
    return UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32 + 48, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
        use_linear_projection=True, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
    )


def _tiny_text_encoder(cls=CLIPTextModel, width: int = 32):
    return cls(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, projection_dim=32,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))


def build_tiny(path: Path | str, seed: int = 0, sdxl: bool = False) -> Path:
    """Build a tiny SD 1.5 (or SDXL) architecture model and save it as a diffusers folder at `path`."""
    torch.manual_seed(seed)
    unet = _tiny_unet(sdxl)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32, 32),  # four blocks: the real 8x downsampling
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
        scaling_factor=0.13025 if sdxl else 0.18215,
    )
    torch.manual_seed(seed + 2)
    text_encoder = _tiny_text_encoder()
    # SD 1.5's and SDXL's noise schedule; each model's own default sampler.
    schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)
    if not sdxl:
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
            scheduler=PNDMScheduler(**schedule, skip_prk_steps=True, set_alpha_to_one=False),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        torch.manual_seed(seed + 3)
        # The second encoder is wider, as SDXL's is: diffusers' single-file loader tells the two apart by width.
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=_tiny_text_encoder(CLIPTextModelWithProjection, width=48),
            tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(pad_token="!"),  # SDXL's second tokenizer pads with "!"
            unet=unet, scheduler=EulerDiscreteScheduler(**schedule, timestep_spacing="leading"), add_watermarker=False,
        )
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def copy_pretrained_tiny(path: Path | str) -> Path:
    """The pretrained `tiny` (stylemix/pretrained/tiny/) as a diffusers folder at `path`, with its
    tokenizer, which is derived from open_clip's BPE rather than committed."""
    shutil.copytree(PRETRAINED_TINY, path, dirs_exist_ok=True)
    clip_tokenizer().save_pretrained(Path(path) / "tokenizer")
    return Path(path)


def _not_found(model: str, kind: str, err: Exception, key: str = "base.model") -> StyleMixError:
    if kind == "hub":
        offline = " HF_HUB_OFFLINE is set, so nothing was downloaded;" if hub_constants.HF_HUB_OFFLINE else ""
        where = f"on disk and in the Hugging Face cache ({hub_constants.HF_HUB_CACHE})"
        return StyleMixError(
            f"{key} = {model!r}: not found {where}.{offline} download it once with network "
            f"(`hf download {model}`) or point {key} at a local folder ({type(err).__name__})"
        )
    return StyleMixError(f"{key} = {model!r}: cannot load from {Path(model).resolve()} ({err})")


def load_pipeline(base: Base | str, dtype: str | None = None, transformer: bool = True) -> DiffusionPipeline:
    """Load the `base` section's model (or just a model name, with the defaults) as a diffusers
    pipeline, safety checker off, in `dtype` (default base.dtype), with base.vae instead of its own
    VAE and base.prediction_type in its scheduler when given. `transformer=False`: a FLUX.1 / SD 3.5
    pipeline without its transformer (encode@S needs only the VAE and text encoders: FLUX.1's
    transformer is 24 GB of memory)."""
    base = Base(model=base) if isinstance(base, str) else base
    model, kind, torch_dtype = base.model, model_kind(base.model), DTYPES[dtype or base.dtype]
    if kind == "tiny":
        if not (BASE_DIR / "model_index.json").is_file():
            raise StyleMixError(f"base.model = {model!r}: {BASE_DIR}/ holds no model yet; run `dvc repro base`")
        model, kind = str(BASE_DIR), "local"
    extra = {"vae": load_vae(base.vae, torch_dtype)} if base.vae else {}
    if not transformer and family(base) in FLOW:
        extra["transformer"] = None
    try:
        if kind == "single_file":
            pipe = _from_single_file(base, torch_dtype, extra)
        else:  # SDXL pipelines have no safety checker; diffusers ignores the two arguments for them.
            pipe = DiffusionPipeline.from_pretrained(model, revision=base.revision, dtype=torch_dtype, safety_checker=None,
                                                     requires_safety_checker=False, **extra)
    except (OSError, ValueError) as err:
        raise _not_found(model, kind, err) from None
    if architecture(pipe) in FLOW and (base.prediction_type or base.zero_terminal_snr):
        raise StyleMixError(f"base.prediction_type / base.zero_terminal_snr: settings of SD 1.5 / SDXL's noise schedule, and "
                            f"{model} is {NAMES[architecture(pipe)]}, which trains by flow matching; leave them unset")
    if base.prediction_type:  # v-prediction models whose scheduler config does not say so (many community files)
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=base.prediction_type)
    if base.zero_terminal_snr:
        if (kind := pipe.scheduler.config.prediction_type) != "v_prediction":
            raise StyleMixError(f"base.zero_terminal_snr needs a v-prediction model and {model} predicts {kind}, which "
                                "cannot denoise pure noise; set base.prediction_type: v_prediction if it is a v-model, "
                                "else base.zero_terminal_snr: false")
        # DDIM's config carries both keys to the schedulers built from it (training's DDPM, drawing's),
        # which PNDM's (SD 1.5's own) would drop.
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return pipe


def _from_single_file(base: Base, torch_dtype: torch.dtype, extra: dict) -> DiffusionPipeline:
    """An original-layout checkpoint through diffusers' from_single_file, with every config from a
    local folder (the real SD 1.5 / SDXL configs we ship, or base.config) and CLIP's tokenizer from
    open_clip's BPE: nothing is looked up on the hub."""
    path = Path(base.model)
    if not path.is_file():
        raise StyleMixError(f"base.model = {base.model!r}: no such file ({path.resolve()})")
    keys = single_file.file_keys(path)
    if name := flow_files.model_type(keys):
        return _transformer_file(base, name, torch_dtype, extra)
    arch = single_file.architecture_of(keys)
    config = Path(base.config) if base.config else single_file.CONFIGS[arch]
    if "vae" not in extra and not any(k.startswith(single_file.VAE) for k in keys):
        raise StyleMixError(f"base.model = {base.model!r}: the file holds no VAE (no {single_file.VAE}* weights); set base.vae "
                            "to one, e.g. stabilityai/sd-vae-ft-mse for SD 1.5 or madebyollin/sdxl-vae-fp16-fix for SDXL")
    parts = {"tokenizer": clip_tokenizer()}
    parts |= {"tokenizer_2": clip_tokenizer(pad_token="!")} if arch == SDXL else {"safety_checker": None}
    prefix = single_file.CLIP[arch]
    if not any(k.startswith(prefix + "text_model.") for k in keys):  # older files: CLIP one level up
        parts["text_encoder"] = single_file.text_encoder_without_prefix(path, prefix, config, torch_dtype)
    return PIPELINES[arch].from_single_file(str(path), config=str(config), local_files_only=True, dtype=torch_dtype,
                                            **parts, **extra)


def _transformer_file(base: Base, name: str, torch_dtype: torch.dtype, extra: dict) -> DiffusionPipeline:
    """A FLUX.1 / SD 3.5 transformer file through diffusers' from_single_file with its real config (or
    base.config's), in the pipeline of base.components (or the model's own hub id), whose VAE and text
    encoders it lacks."""
    arch, hub_id = flow_files.MODELS[name]
    config = str(base.config or single_file.CONFIGS[name])
    if "transformer" not in extra:  # else None: load_pipeline's transformer=False
        extra["transformer"] = flow_files.TRANSFORMERS[arch].from_single_file(
            base.model, config=config, subfolder="transformer", local_files_only=True, dtype=torch_dtype)
    components = base.components or hub_id
    try:
        return PIPELINES[arch].from_pretrained(components, dtype=torch_dtype, **extra)
    except (OSError, ValueError) as err:
        raise _not_found(components, model_kind(components), err, key="base.components") from None


def family(base: Base) -> str:
    """The base's family (SD15, SDXL, FLUX, SD3) before loading it: its model_index.json's pipeline, or
    a single file's keys."""
    kind = model_kind(base.model)
    if kind == "single_file":
        keys = single_file.file_keys(Path(base.model))
        return flow_files.MODELS[name][0] if (name := flow_files.model_type(keys)) else single_file.architecture_of(keys)
    folder = str(BASE_DIR) if kind == "tiny" else base.model
    try:
        pipeline = DiffusionPipeline.load_config(folder, revision=base.revision)["_class_name"]
    except (OSError, ValueError, KeyError) as err:
        raise _not_found(base.model, kind, err) from None
    return next((arch for arch, cls in PIPELINES.items() if cls.__name__ == pipeline), SD15)


def load_vae(vae: str, dtype: torch.dtype) -> AutoencoderKL:
    try:
        return AutoencoderKL.from_pretrained(vae, dtype=dtype)
    except (OSError, ValueError) as err:
        raise _not_found(vae, model_kind(vae), err, key="base.vae") from None


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
