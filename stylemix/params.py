"""The typed schema of params.yaml, and the one loader every stage uses.

`load(*sections)` validates the whole file (a bad value anywhere stops any stage before it
works) but hands back only the sections the stage declared in dvc.yaml, so no stage can read
a value behind DVC's back.
"""
import re
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from stylemix.emoji import HELDOUT, LOOKS
from stylemix.errors import StyleMixError
from stylemix.paths import PARAMS_FILE

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
TOKEN = re.compile(r"^<[a-z0-9_]+>$")  # a new concept token: never a word the tokenizer already knows
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
TINY_MODELS = ("tiny", "tiny-sdxl", "tiny-flux", "tiny-sd3")  # built from configs by the base stage
# LoRA target presets by layer name: the main reference's attention projections, the caption-aware
# reference's cross-attention query/value only, and every linear layer of the attention blocks (kohya's set).
TARGET_PRESETS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "cross_attn_qv": ["attn2.to_q", "attn2.to_v"],
    "all": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"],
}
# Presets by block (B-LoRA): every `all` layer of one decoder attention (stylemix.adapters.lora_files.block_preset):
# SDXL's up_blocks.0.attentions.1 holds style, .0 content; on SD 1.5's shape up_blocks.2's (measured).
BLOCK_PRESETS = {"style": 1, "content": 0}
Positive = Annotated[int, Field(gt=0)]
# YAML 1.1 (PyYAML) reads an unquoted `no` as false, and DVC's `-S` writes it unquoted.
Precision = Annotated[Literal["no", "fp16", "bf16"], BeforeValidator(lambda v: "no" if v is False else v)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def model_kind(model: str) -> str:
    """Which of the four kinds of base model a `base.model` value names."""
    if model in TINY_MODELS:
        return "tiny"
    path = Path(model).expanduser()
    if model.endswith(".safetensors"):
        return "single_file"
    if path.is_dir():
        return "local"
    if HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        return "hub"
    raise ValueError(
        "not tiny, tiny-sdxl, tiny-flux, tiny-sd3, an existing diffusers folder, a .safetensors checkpoint, "
        "or a hub id like stable-diffusion-v1-5/stable-diffusion-v1-5"
    )


class Buckets(Section):
    """Aspect-ratio buckets (kohya's): sizes of about resolution^2 pixels, sides in steps of `step` px
    from min_side to max_side (null: half and twice the resolution); off, every image is a centre square."""
    enabled: bool = False
    step: Positive = 64  # a multiple of 8; 64 suits SD 1.5 / SDXL (latent sides in multiples of 8)
    min_side: Positive | None = None
    max_side: Positive | None = None

    @field_validator("step")
    @classmethod
    def _step_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be divisible by 8 (the VAE downsamples by 8)")
        return value


class Base(Section):
    model: str = "tiny"
    revision: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    resolution: Annotated[int, Field(ge=32)] = 512
    vae: str | None = None  # a VAE to use instead of the model's (hub id or diffusers folder), e.g. an fp16-safe SDXL VAE
    config: str | None = None  # a single-file model's configs: a diffusers folder (weights not needed); null = the real model's
    components: str | None = None  # a FLUX.1 / SD 3.5 transformer file's VAE and text encoders: a hub id or diffusers
                                   # folder of that family; null = the model's own hub id (black-forest-labs/FLUX.1-dev, ...)
    prediction_type: Literal["epsilon", "v_prediction"] | None = None  # null = the model's own; v_prediction for v-models
    zero_terminal_snr: bool = False  # a v-model trained to reach pure noise (Lin et al. 2023): training and drawing
                                     # rescale its schedule so, with trailing timesteps; refused on an epsilon model
    buckets: Buckets = Buckets()

    @field_validator("model")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        model_kind(value)
        return value

    @field_validator("vae")
    @classmethod
    def _vae_kind(cls, value: str | None) -> str | None:
        if value is not None and model_kind(value) not in ("hub", "local"):
            raise ValueError("must be a hub id or a diffusers VAE folder (or null for the model's own)")
        return value

    @field_validator("config")
    @classmethod
    def _config_folder(cls, value: str | None) -> str | None:
        if value is not None and not (Path(value).expanduser() / "model_index.json").is_file():
            raise ValueError(f"no model_index.json in {value}: point it at a diffusers model folder (only its configs "
                             "are read) or null for the real model's configs")
        return value

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be divisible by 8 (the VAE downsamples by 8; the tiny demo model's by 4)")
        return value

    @model_validator(mode="after")
    def _buckets_hold_the_square(self) -> "Base":
        b = self.buckets
        low, high = b.min_side or self.resolution // 2, b.max_side or self.resolution * 2
        if b.enabled and not low <= self.resolution // b.step * b.step <= high:
            raise ValueError(f"buckets: min_side {low} to max_side {high} must hold the square bucket of resolution "
                             f"{self.resolution} in steps of {b.step} px")
        return self


class Sample(Section):
    """The demo's data (stylemix.demo.sample): emoji looks as style folders, each its own subjects, and
    subjects held out of every style, whose pictures in every look are the ground truth."""
    styles: list[Literal[tuple(LOOKS)]]
    images_per_style: Annotated[int, Field(ge=3)] = 40
    heldout: list[str] = Field(min_length=1, default=list(HELDOUT))  # subject names as the emoji sets spell them
    size: Annotated[int, Field(ge=32)] = 128  # px of a picture's short side (512 or 1024 for a real model)
    seed: int = 0


class Timesteps(Section):
    """Which noise levels a training step draws (diffusers' `timestep_bias_*`, SD 3's logit-normal).
    A style lives mostly at some of them; the weights of the rest stay 1."""
    sampling: Literal["uniform", "earlier", "later", "range", "logit_normal", "mode"] = "uniform"
    multiplier: Annotated[float, Field(gt=0)] = 2.0  # earlier / later / range: that part is drawn this many times as often
    portion: Annotated[float, Field(gt=0, lt=1)] = 0.25  # earlier / later: this share of the timesteps, from the low / high end
    range: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(gt=0)]] = (200, 800)  # range: [begin, end)
    mean: float = 0.0  # logit_normal: t / T = sigmoid(N(mean, std)); a positive mean leans to the noisy end
    std: Annotated[float, Field(gt=0)] = 1.0
    mode_scale: float = 1.29  # mode (SD 3's paper): how far the draws lean to the middle; 0 is uniform
    # FLUX.1 / SD 3.5 (flow matching) only:
    shift: Annotated[float, Field(gt=0)] | None = None  # null: the model's own (SD 3.5: 3.0; FLUX.1: by resolution)
    weighting: Literal["none", "sigma_sqrt", "cosmap"] = "none"  # the loss weight by sigma (diffusers' SD 3 schemes)

    @model_validator(mode="after")
    def _ordered(self) -> "Timesteps":
        if self.range[0] >= self.range[1]:
            raise ValueError(f"range {list(self.range)}: begin must be below end, e.g. [200, 800]")
        return self


class Ema(Section):
    """An exponential moving average of the LoRA weights (OneTrainer's, SimpleTuner's), kept beside
    them; the saved LoRA is the average's. diffusers' EMAModel: with warm-up the decay grows from 0
    toward `decay` as 1 - (1 + step)^-power, so the first, random weights soon leave the average."""
    enabled: bool = False
    decay: Annotated[float, Field(gt=0, lt=1)] = 0.99
    warmup: bool = True  # false: diffusers' other ramp, (1 + step) / (10 + step)
    power: Annotated[float, Field(gt=0)] = 2 / 3


class MaskedLoss(Section):
    """The loss counts the subject: each latent pixel weighted by the image's alpha there (kohya's
    alpha_mask, OneTrainer's masked training), the transparent background by `unmasked_weight`."""
    enabled: bool = False
    unmasked_weight: Annotated[float, Field(ge=0, le=1)] = 0.1  # 0: the background is not learned at all


# pytorch-optimizer's classes by our name (one well-kept collection, not a package each); adamw is torch's.
OPTIMIZERS = {"prodigy": "Prodigy", "lion": "Lion", "adafactor": "AdaFactor", "came": "CAME",
              "schedule_free_adamw": "ScheduleFreeAdamW"}


class Train(Section):
    epochs: Positive = 10
    max_steps: Positive | None = None  # when set, wins over epochs
    batch_size: Positive = 2
    gradient_accumulation: Positive = 1
    lr: Annotated[float, Field(gt=0)] = 1e-4
    text_encoder_lr: Annotated[float, Field(gt=0)] | None = None  # None: same as lr
    token_lr: Annotated[float, Field(gt=0)] = 5e-4  # the new concept tokens' embeddings (styles.<name>.tokens)
    scheduler: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "lion", "adafactor", "came", "schedule_free_adamw"] = "adamw"
    optimizer_args: dict[str, float | bool | str | list[float]] = {}  # passed to the optimizer, e.g. {d_coef: 1.0}
    weight_decay: Annotated[float, Field(ge=0)] = 1e-2
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0
    mixed_precision: Precision = "no"
    quantize_base: Literal["int8"] | None = None  # the frozen UNet / transformer's linear weights in 8 bits (torchao)
    min_snr_gamma: Annotated[float, Field(gt=0)] | None = 5.0
    debiased_estimation: bool = False  # kohya's: weight the loss by 1/sqrt(SNR), i.e. toward the noisy timesteps
    noise_offset: Annotated[float, Field(ge=0)] = 0.0
    timesteps: Timesteps = Timesteps()
    flux_guidance: Annotated[float, Field(ge=0)] = 1.0  # FLUX.1 [dev]'s guidance input while training (kohya's guidance_scale)
    ema: Ema = Ema()
    masked_loss: MaskedLoss = MaskedLoss()
    caption_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    random_flip: bool = True
    gradient_checkpointing: bool = False
    channels_last: bool = True  # NHWC convolutions: measured faster on CPU (bench/train_step.py)
    compile: bool = False  # torch.compile the UNet: faster steps after a long first one
    seed: int = 0
    checkpoint_every: Positive = 50
    keep_checkpoints: Positive = 2
    validation_prompts: list[str] = ["a cat sitting by a window"]
    validation_steps: Positive = 20  # denoising steps of each validation image
    validate_every: Positive | None = None  # also make validation images every N steps

    @model_validator(mode="after")
    def _schedule_free_has_no_schedule(self) -> "Train":
        if self.optimizer == "schedule_free_adamw" and self.scheduler != "constant":
            raise ValueError(f"optimizer schedule_free_adamw replaces the lr schedule ({self.scheduler}): set "
                             "train.scheduler: constant (train.warmup_steps becomes the optimizer's own warm-up)")
        return self


def _optional(field) -> object:
    kind = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    return kind | None


# Per-style overrides of any train key, e.g. more epochs for a style with few images.
TrainOverride = create_model(
    "TrainOverride", __base__=Section, **{name: (_optional(f), None) for name, f in Train.model_fields.items()}
)


class Style(Section):
    source: str
    trigger: Annotated[str, Field(min_length=1)]
    resample: Literal["lanczos", "bicubic", "bilinear", "area", "nearest"] = "lanczos"
    template: str = "{trigger}, {caption}"
    overrides: dict[str, str] = {}
    tokens: dict[str, str] = {}  # new concept token -> the word or phrase its embedding starts from
    validation_split: Annotated[int, Field(ge=0)] | None = None  # held-out images; None: validation.split
    repeats: Positive = 1  # each image this many times an epoch (kohya's num_repeats): small and large styles balance
    train: TrainOverride = TrainOverride()

    @field_validator("tokens")
    @classmethod
    def _token_names(cls, tokens: dict[str, str]) -> dict[str, str]:
        for token, phrase in tokens.items():
            if not TOKEN.match(token):
                raise ValueError(f"token {token!r} must be written <name> (lowercase letters, digits, _), e.g. <cu_trg>")
            if not phrase.strip():
                raise ValueError(f"token {token}: give a word or phrase to start its embedding from, e.g. close-up")
        return tokens

    @field_validator("trigger")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("template")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        if "{trigger}" not in value or "{caption}" not in value:
            raise ValueError("must contain {trigger} and {caption}")
        return value


class Validation(Section):
    split: Annotated[int, Field(ge=0)] = 3  # images per style that training never sees (0: none)
    timesteps: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, default=[100, 300, 500, 700, 900])
    seed: int = 0  # which images are held out, and the fixed noise per (image, timestep)


class Prior(Section):
    """Prior preservation (DreamBooth's --with_prior_preservation, kohya's reg_data_dir): pictures of
    plain prompts that the base draws once (stage `prior`, cached) or a folder of your own, which
    every training step also learns at `weight`, so a style LoRA keeps drawing what it was not
    asked to change. Off while `images` is 0 and there is no `folder`."""
    images: Annotated[int, Field(ge=0)] = 0  # pictures the base draws, prompt after prompt, a seed each
    prompts: list[str] = Field(min_length=1, default=["a picture"])  # class prompts: no trigger word
    folder: str | None = None  # your own regularisation images (a .txt caption beside each, else prompts[0]) instead
    weight: Annotated[float, Field(gt=0)] = 1.0  # the prior batch's loss weight (DreamBooth's prior_loss_weight)
    steps: Positive = 25  # denoising steps of each drawn picture
    guidance_scale: Annotated[float, Field(ge=0)] = 7.5
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.images > 0 or self.folder is not None


class Filter(Section):
    laplacian_min: Annotated[float, Field(ge=0)] = 100.0
    analysis_size: Annotated[int, Field(ge=64)] = 512
    min_side: Positive = 16
    dedup_distance: Annotated[int, Field(ge=0)] | None = 4


class Tagger(Section):
    model: str = "SmilingWolf/wd-vit-tagger-v3"  # a WD14 tagger: hub id or folder with model.onnx + selected_tags.csv
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.35  # general tags at or over this confidence
    character_threshold: Annotated[float, Field(ge=0, le=1)] = 0.85
    exclude: list[str] = []  # tags never written (e.g. ones every image of the style has)
    underscores: bool = False  # keep the tagger's long_hair rather than long hair


class Caption(Section):
    backend: Literal["sidecar", "blip", "blip2", "tags"] = "sidecar"
    model: str = "Salesforce/blip-image-captioning-base"  # blip / blip2
    tagger: Tagger = Tagger()  # tags
    batch_size: Positive = 8
    max_new_tokens: Positive = 40


class Tags(Section):
    """How training reads comma-separated captions (kohya's shuffle_caption, keep_tokens,
    caption_tag_dropout_rate). The text encoders' outputs are cached, so encode@S caches `variants`
    seeded variants of each caption and training reads variant (epoch mod variants)."""
    shuffle: bool = False
    keep_tokens: Annotated[int, Field(ge=0)] = 1  # the first N tags stay in place (the trigger, with the default template)
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0  # each other tag is left out with this probability
    variants: Positive = 8
    seed: int = 0
    # caption tokens the text encoders read (kohya's max_token_length): 75 is one CLIP window;
    # 150 and 225 read longer captions in 75-token chunks (stylemix.data.conditioning)
    max_token_length: Literal[75, 150, 225] = 75

    @property
    def active(self) -> bool:
        return self.shuffle or self.dropout > 0


def _shape(value) -> str:
    """Which branch of a union a params value takes, so that an error names only that one."""
    return "(dict)" if isinstance(value, (dict, BaseModel)) else "(list)" if isinstance(value, (list, tuple)) else "(scalar)"


SHAPE_TAGS = ("(dict)", "(list)", "(scalar)")


def by_shape(**branches):
    """A union whose branch is chosen by the value's shape (a mapping, a list, else a scalar)."""
    return Annotated[Union[tuple(Annotated[t, Tag(f"({tag})")] for tag, t in branches.items())], Discriminator(_shape)]


class Lora(Section):
    # dora: LoRA plus a trained magnitude per output channel (stylemix.adapters.dora); loha, lokr: LyCORIS's
    # Hadamard and Kronecker products (stylemix.adapters.lycoris)
    type: Literal["lora", "dora", "loha", "lokr"] = "lora"
    rank: Positive = 4
    alpha: Annotated[float, Field(gt=0)] = 4.0
    targets: by_shape(scalar=Literal["attn", "cross_attn_qv", "all", "style", "content", "single_blocks"], list=Annotated[list[str], Field(min_length=1)]) = "attn"
    conv_rank: Annotated[int, Field(ge=0)] = 0  # LoCon: LoRA on the ResNets' 3x3 convolutions too (0 = off)
    conv_alpha: Annotated[float, Field(gt=0)] | None = None  # null = conv_rank
    text_encoder: bool = False

    @model_validator(mode="after")
    def _unet_only_types(self) -> "Lora":
        if self.type == "dora" and self.text_encoder:  # found by the load check (tests/test_load_check.py)
            raise ValueError("type dora with text_encoder: true: diffusers (through transformers' adapter loading) "
                             "drops a text encoder's DoRA magnitudes, so the file would not draw as trained; set "
                             "lora.text_encoder: false (DoRA on the UNet) or lora.type: lora")
        if self.type in ("loha", "lokr") and self.text_encoder:
            raise ValueError(f"type {self.type} with text_encoder: true: stylemix trains and loads LoHa / LoKr on the UNet "
                             "only (diffusers loads neither); set lora.text_encoder: false or lora.type: lora")
        return self

    @property
    def conv_alpha_or_rank(self) -> float:
        """The convolutions' alpha as trained: conv_alpha, else conv_rank."""
        return self.conv_alpha or self.conv_rank


BlockWeight = by_shape(scalar=float, dict=dict[Annotated[str, Field(pattern=r"^block_\d+$")], by_shape(scalar=float, list=list[float])])


class BlockGroups(Section):
    """A style's multiplier per group of UNet blocks and for the text encoder(s) (stylemix.adapters.block_weights)."""
    text_encoder: float = 1.0
    down: BlockWeight = 1.0
    mid: float = 1.0
    up: BlockWeight = 1.0


# Per style: groups, an LBW vector (BASE, then one number per attention layer) or an LBW preset name.
BlockSpec = by_shape(dict=BlockGroups, list=list[float], scalar=str)


Fraction = Annotated[float, Field(ge=0, le=1)]


class Window(Section):
    """A style on, at its weight, from `start` to `end` of the denoising steps (fractions), off outside."""
    start: Fraction = 0.0
    end: Fraction = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> "Window":
        if self.start >= self.end:
            raise ValueError(f"start {self.start:g} must be below end {self.end:g}")
        return self


def _points(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if not points or any(b[0] <= a[0] for a, b in zip(points, points[1:])):
        raise ValueError("give (step fraction, multiplier) points with increasing fractions, e.g. [[0, 1], [0.6, 0]]")
    return points


# A strength schedule over the denoising steps: a window, or (fraction, multiplier) points, linear between.
Schedule = by_shape(dict=Window, list=Annotated[list[tuple[Fraction, float]], AfterValidator(_points)])


MergeMethod = Literal["linear", "svd", "ties", "dare_linear", "dare_ties"]
NEEDS_DENSITY = ("ties", "dare_linear", "dare_ties")


def _mixing_needs(method: str, density: float | None, styles, blocks: dict, schedule: dict) -> None:
    """What a combination and an explored pair both ask: a density where the method drops entries,
    block weights and schedules only for styles the mix has."""
    if method in NEEDS_DENSITY and density is None:
        raise ValueError(f"method {method} needs an explicit density in (0, 1]")
    for key, named in (("blocks", blocks), ("schedule", schedule)):
        if unknown := sorted(set(named) - set(styles)):
            raise ValueError(f"{key} names {', '.join(unknown)}, not among its styles ({', '.join(styles)})")


class Combo(Section):
    weights: dict[str, float]
    method: MergeMethod = "linear"
    rank: Positive | None = None
    density: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int = 0
    blocks: dict[str, BlockSpec] = {}  # style -> its weight per block (A1111 LBW); a style not named: the same everywhere
    schedule: dict[str, Schedule] = {}  # style -> its strength over the denoising steps (generate draws the styles live)

    @model_validator(mode="after")
    def _method_needs(self) -> "Combo":
        if len(self.weights) < 2:
            raise ValueError("a combination needs at least two styles in weights")
        _mixing_needs(self.method, self.density, self.weights, self.blocks, self.schedule)
        return self


class ExplorePair(Section):
    """One weight plane of the mixing lab (explore@P): every weight of the first style (rows) with
    every weight of the second (columns), for each method; block weights and a schedule as a combination's."""
    styles: Annotated[list[str], Field(min_length=2, max_length=2)]
    weights: list[Annotated[float, Field(ge=-1, le=2)]] = Field([0.0, 0.25, 0.5, 0.75, 1.0], min_length=2)
    methods: list[MergeMethod] = Field(["linear"], min_length=1)  # linear is drawn live (set_adapters: the same model)
    rank: Positive | None = None
    density: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int = 0
    blocks: dict[str, BlockSpec] = {}
    schedule: dict[str, Schedule] = {}

    @model_validator(mode="after")
    def _a_plane(self) -> "ExplorePair":
        if self.styles[0] == self.styles[1]:
            raise ValueError("a pair needs two different styles")
        if len(set(self.weights)) < len(self.weights) or len(set(self.methods)) < len(self.methods):
            raise ValueError("weights and methods must not repeat")
        if self.schedule and self.methods != ["linear"]:
            raise ValueError("a schedule is drawn live, which only the linear mix is: set methods: [linear] or drop it")
        for method in self.methods:
            _mixing_needs(method, self.density, self.styles, self.blocks, self.schedule)
        return self

    def combo(self, method: str, weights: dict[str, float]) -> Combo:
        """The combination of one point of the plane (what merge@C would make of it)."""
        return Combo(weights=weights, method=method, rank=self.rank, density=self.density, seed=self.seed,
                     blocks={s: b for s, b in self.blocks.items() if weights[s]},
                     schedule={s: x for s, x in self.schedule.items() if weights[s]})


class Explore(Section):
    """The mixing lab's drawing and judging, shared by every pair."""
    prompts: list[str] = Field(min_length=1, default=["a cat sitting by a window"])  # drawn with both styles' triggers
    bleed_prompts: list[str] = Field(min_length=1, default=["a cup of coffee on a saucer"])  # drawn without triggers
    seeds: list[int] = Field(min_length=1, default=[0])
    content_kept: Fraction = 0.5  # a point counts when its CLIP score keeps this share of the base's
    pairs: dict[str, ExplorePair] = {}


class Merge(Section):
    combos: dict[str, Combo] = {}
    explore: Explore = Explore()


class Generate(Section):
    prompts: list[str] = Field(min_length=1, default=["a cat sitting by a window"])
    seeds: list[int] = Field(min_length=1, default=[0])
    negative_prompt: str = ""
    steps: Positive = 25
    guidance_scale: Annotated[float, Field(ge=0)] = 7.5
    guidance_rescale: Annotated[float, Field(ge=0, le=1)] = 0.0  # Lin et al.'s fix for over-exposure: 0.7 with base.zero_terminal_snr
    scheduler: Literal["dpmsolver++", "ddim", "euler"] = "dpmsolver++"
    # Each style and combination also drawn at these LoRA weights (first seed) for the strengths grid;
    # 1.0 is always drawn (the images scored).
    strengths: list[Annotated[float, Field(gt=0, le=2)]] = [1.0]
    # Images drawn at once (one UNet batch, twice that with guidance): more is faster until the device
    # is busy, and costs memory; lower it on a GPU that runs out.
    batch_size: Positive = 4


class Score(Section):
    clip_model: str = "ViT-B-32"  # an open_clip architecture, or a folder: local-dir:PATH / hf-hub:ID
    clip_pretrained: str | None = None  # an open_clip tag (openai, laion2b_s34b_b79k), a weights file, or null


class Params(Section):
    base: Base | None = None
    sample: Sample | None = None
    styles: dict[str, Style] | None = None
    filter: Filter | None = None
    caption: Caption | None = None
    tags: Tags | None = None
    lora: Lora | None = None
    train: Train | None = None
    validation: Validation | None = None
    prior: Prior | None = None
    merge: Merge | None = None
    generate: Generate | None = None
    score: Score | None = None

    @field_validator("styles")
    @classmethod
    def _style_names_and_triggers(cls, styles: dict[str, Style] | None) -> dict[str, Style] | None:
        if not styles:
            raise ValueError("declare at least one style")
        seen: dict[str, str] = {}
        for name, style in styles.items():
            if not NAME.match(name):
                raise ValueError(f"style name {name!r} must be lowercase letters, digits, _")
            if style.trigger in seen:
                raise ValueError(
                    f"styles.{name}.trigger = {style.trigger!r} is also the trigger of "
                    f"styles.{seen[style.trigger]}: give each style its own"
                )
            seen[style.trigger] = name
        return styles

    @model_validator(mode="after")
    def _combos_name_styles(self) -> "Params":
        if self.merge and self.styles is not None:
            def known(key: str, names) -> None:
                if unknown := sorted(set(names) - set(self.styles)):
                    raise ValueError(f"{key} names unknown style(s) {', '.join(unknown)}; styles are: {', '.join(self.styles)}")

            for combo, spec in self.merge.combos.items():
                if combo in self.styles or combo == "base":
                    raise ValueError(f"merge.combos.{combo}: the name is taken by a style or the base model")
                known(f"merge.combos.{combo}", spec.weights)
            for pair, spec in self.merge.explore.pairs.items():
                known(f"merge.explore.pairs.{pair}", spec.styles)
        return self


def _one_line(err: ValidationError, source: Path | str) -> str:
    """Pydantic's report, as one line naming each key, its value and what is allowed."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-") and str(p) not in SHAPE_TAGS)
        if e["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key (check its spelling against params.yaml's schema)")
        elif e["type"] == "missing":
            parts.append(f"{key}: missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            shown = "" if isinstance(e["input"], dict) else f" = {e['input']!r}"
            parts.append(f"{key}{shown}: {msg}" if key else msg)  # a check across sections names its keys itself
    return f"{source}: " + "; ".join(parts)


def validate(raw: dict, source: Path = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise StyleMixError(_one_line(err, source)) from None


def load(*sections: str, path: Path | str = PARAMS_FILE) -> Params:
    """Validate the whole params file; return it with only `sections` filled in."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise StyleMixError(f"{path}: cannot read ({err.strerror}); run from the repo root") from None
    except yaml.YAMLError as err:
        raise StyleMixError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise StyleMixError(f"{path}: must be a mapping of sections")
    params = validate(raw, path)
    missing = [s for s in sections if getattr(params, s) is None]
    if missing:
        raise StyleMixError(f"{path}: section(s) {', '.join(missing)} missing")
    hidden = {s: None for s in Params.model_fields if s not in sections}
    return params.model_copy(update=hidden)


def train_for(params: Params, name: str) -> Train:
    """The train section with the style's own overrides applied."""
    override = style(params, name).train.model_dump(exclude_unset=True, exclude_none=True)
    merged = params.train.model_dump()
    for key, value in override.items():  # a sub-section (timesteps, ema) overrides key by key
        merged[key] = merged[key] | value if isinstance(getattr(params.train, key), Section) else value
    try:
        return Train.model_validate(merged)
    except ValidationError as err:
        raise StyleMixError(_one_line(err, f"{PARAMS_FILE}: styles.{name}.train")) from None


def validation_split(params: Params, name: str) -> int:
    """How many of the style's images are held out: its own validation_split, else validation.split."""
    own = style(params, name).validation_split
    return params.validation.split if own is None else own


def style(params: Params, name: str) -> Style:
    """The named style, or a one-line error listing the styles that exist."""
    if name not in params.styles:
        raise StyleMixError(f"unknown style {name!r}; params.yaml styles are: {', '.join(params.styles)}")
    return params.styles[name]
