"""What a trained LoRA says of its training: the README.md beside it (trigger word, tokens,
settings, how to load it) and the settings under the `ss_*` metadata names kohya's trainer writes,
which A1111's, ComfyUI's and Civitai's readers show."""
from stylemix import params
from stylemix.adapters.lora_files import kohya_file, kohya_readers
from stylemix.adapters.tokens import a1111_file, diffusers_file
from stylemix.data.prompts import with_trigger
from stylemix.families import FLOW, SD15


def model_card(name: str, style: params.Style, p: params.Params, cfg: params.Train, info: dict) -> str:
    tokens, example = "", with_trigger("a cat sitting by a window", style)
    if style.tokens:
        first = next(iter(style.tokens))
        rows = "\n".join(f"| `{t}` | {phrase} | `{a1111_file(t)}` |" for t, phrase in style.tokens.items())
        tokens = (f"\nNew tokens, trained with the LoRA (lr {cfg.token_lr:g}); A1111 and ComfyUI write an embedding "
                  f"by its file name.\n\n| token | started from | A1111 / ComfyUI embedding |\n|---|---|---|\n{rows}\n")
        example = with_trigger(f"{first}, a cat sitting by a window", style)
    loads = "".join(f'pipe.load_textual_inversion("models/lora/{name}/{diffusers_file(t)}")\n' for t in style.tokens)
    if loads:
        loads = "# SDXL: also each tokens/<name>_2.safetensors, with text_encoder_2 and tokenizer_2\n" + loads
    conv = f", convolutions {p.lora.conv_rank} / {p.lora.conv_alpha_or_rank:g}" if p.lora.conv_rank else ""
    dora = " (LyCORIS's dora_scale: diffusers drops it from kohya files)" if p.lora.type == "dora" else ""
    arch = info.get("architecture", SD15)
    kohya = f"{kohya_file(name, arch)} for {kohya_readers(arch)}"
    load = f'pipe.load_lora_weights("models/lora/{name}")   # diffusers; {kohya}{"" if arch in FLOW else dora}'
    if p.lora.type in ("loha", "lokr"):  # diffusers' loader reads neither: peft does, from the file's own config
        config = "LoHaConfig" if p.lora.type == "loha" else "LoKrConfig"
        load = (f'# {kohya} (LyCORIS {p.lora.type}); diffusers\' loader reads neither file:\n'
                f'import json\nfrom peft import {config}, set_peft_model_state_dict\nfrom safetensors import safe_open\n'
                f'from safetensors.torch import load_file\n\npath = "models/lora/{name}/pytorch_lora_weights.safetensors"\n'
                f'config = json.loads(safe_open(path, "pt").metadata()["lora_adapter_metadata"])\n'
                f'pipe.unet.add_adapter({config}(**{{k[5:]: v for k, v in config.items() if k.startswith("unet.")}}), "{name}")\n'
                f'set_peft_model_state_dict(pipe.unet, {{k[5:]: v for k, v in load_file(path).items()}}, "{name}")')
    args = f" {cfg.optimizer_args}" if cfg.optimizer_args else ""
    weights = (f"an exponential moving average of the trained weights (decay {cfg.ema.decay:g}"
               f"{', with warm-up' if cfg.ema.warmup else ''})" if cfg.ema.enabled else "the trained weights as they ended")
    captions = f" Captions read up to {info['max_token_length']} tokens." if info["max_token_length"] > 75 else ""
    masked = (f" The loss counted the subject (alpha), the background at {cfg.masked_loss.unmasked_weight:g}."
              if cfg.masked_loss.enabled else "")
    prior = (f" Prior preservation: {info['prior']['images']} pictures of the base's at weight {info['prior']['weight']:g}."
             if info["prior"] else "")
    trained = (f"Optimizer {cfg.optimizer}{args}, timesteps {cfg.timesteps.sampling}; the file holds {weights}."
               f"{captions}{masked}{prior}")
    return f"""# {name} LoRA (stylemix)

Trigger word: **`{style.trigger}`**, used as `{style.template}`.
{tokens}
| base model | resolution | images x repeats | type | rank / alpha | targets | text encoder | steps | lr | precision |
|---|---|---|---|---|---|---|---|---|---|
| {p.base.model} | {p.base.resolution} | {info['images']} x {info['repeats']} | {p.lora.type} | {p.lora.rank} / {p.lora.alpha:g}{conv} | {p.lora.targets} | {p.lora.text_encoder} | {info['steps']} | {cfg.lr:g} | {cfg.mixed_precision}{', base in int8' if cfg.quantize_base else ''} |

{trained}

```python
{load}
{loads}image = pipe("{example}").images[0]
```

![validation images](validation.png)
"""


def kohya_metadata(p: params.Params, cfg: params.Train, info: dict) -> dict[str, str]:
    """The training settings kohya's trainer has a metadata key for, as it writes them (strings,
    None for unset); the rest (timestep sampling, EMA) are in the `stylemix` metadata's `train`."""
    args = ",".join(f"{k}={v}" for k, v in cfg.optimizer_args.items())
    values = {
        "learning_rate": cfg.lr, "unet_lr": cfg.lr, "text_encoder_lr": cfg.text_encoder_lr or cfg.lr,
        "optimizer": cfg.optimizer + (f"({args})" if args else ""), "lr_scheduler": cfg.scheduler,
        "lr_warmup_steps": cfg.warmup_steps, "max_train_steps": info["steps"], "num_train_images": info["images"],
        "batch_size_per_device": cfg.batch_size, "gradient_accumulation_steps": cfg.gradient_accumulation,
        "resolution": f"({p.base.resolution}, {p.base.resolution})", "seed": cfg.seed, "mixed_precision": cfg.mixed_precision,
        "gradient_checkpointing": cfg.gradient_checkpointing, "max_grad_norm": cfg.max_grad_norm,
        "noise_offset": cfg.noise_offset or None, "min_snr_gamma": cfg.min_snr_gamma,
        "debiased_estimation": cfg.debiased_estimation, "zero_terminal_snr": p.base.zero_terminal_snr,
        "v_parameterization": p.base.prediction_type == "v_prediction",
        "max_token_length": info["max_token_length"] if info["max_token_length"] > 75 else None,  # kohya's None: 75
        "caption_dropout_rate": cfg.caption_dropout, "flip_aug": cfg.random_flip, "masked_loss": cfg.masked_loss.enabled,
        "num_reg_images": (info["prior"] or {}).get("images", 0), "prior_loss_weight": (info["prior"] or {}).get("weight", 1.0),
    }
    return {f"ss_{k}": str(v) for k, v in values.items()}
