"""The README.md written beside each trained LoRA: trigger word, tokens, settings, how to load it."""
from stylemix import params
from stylemix.adapters.tokens import a1111_file, diffusers_file
from stylemix.data.prompts import with_trigger


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
    load = f'pipe.load_lora_weights("models/lora/{name}")   # diffusers; {name}_kohya.safetensors for A1111 / ComfyUI{dora}'
    if p.lora.type in ("loha", "lokr"):  # diffusers' loader reads neither: peft does, from the file's own config
        config = "LoHaConfig" if p.lora.type == "loha" else "LoKrConfig"
        load = (f'# {name}_kohya.safetensors for A1111 / ComfyUI (LyCORIS {p.lora.type}); diffusers\' loader reads neither file:\n'
                f'import json\nfrom peft import {config}, set_peft_model_state_dict\nfrom safetensors import safe_open\n'
                f'from safetensors.torch import load_file\n\npath = "models/lora/{name}/pytorch_lora_weights.safetensors"\n'
                f'config = json.loads(safe_open(path, "pt").metadata()["lora_adapter_metadata"])\n'
                f'pipe.unet.add_adapter({config}(**{{k[5:]: v for k, v in config.items() if k.startswith("unet.")}}), "{name}")\n'
                f'set_peft_model_state_dict(pipe.unet, {{k[5:]: v for k, v in load_file(path).items()}}, "{name}")')
    args = f" {cfg.optimizer_args}" if cfg.optimizer_args else ""
    weights = (f"an exponential moving average of the trained weights (decay {cfg.ema.decay:g}"
               f"{', with warm-up' if cfg.ema.warmup else ''})" if cfg.ema.enabled else "the trained weights as they ended")
    trained = f"Optimizer {cfg.optimizer}{args}, timesteps {cfg.timesteps.sampling}; the file holds {weights}."
    return f"""# {name} LoRA (stylemix)

Trigger word: **`{style.trigger}`**, used as `{style.template}`.
{tokens}
| base model | resolution | images x repeats | type | rank / alpha | targets | text encoder | steps | lr | precision |
|---|---|---|---|---|---|---|---|---|---|
| {p.base.model} | {p.base.resolution} | {info['images']} x {info['repeats']} | {p.lora.type} | {p.lora.rank} / {p.lora.alpha:g}{conv} | {p.lora.targets} | {p.lora.text_encoder} | {info['steps']} | {cfg.lr:g} | {cfg.mixed_precision} |

{trained}

```python
{load}
{loads}image = pipe("{example}").images[0]
```

![validation images](validation.png)
"""
