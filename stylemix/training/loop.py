"""Training one LoRA per style on the frozen base model, from the latents encode@S cached (train@S).

Runs through accelerate, so the stage works in one process or several (GPUs or CPU processes).
Reads the cache memory-mapped, one batch's rows a step (stylemix.data.latent_cache), each batch from one
aspect-ratio bucket (stylemix.training.batches). Deterministic: the data order of each epoch and every
random draw come from the seed, so a resumed run equals an unbroken one.
Checkpoints land in models/checkpoints/<style>/ (git-ignored, outside DVC, so they survive between
runs); a rerun after a kill resumes from the newest one made with the same settings.
"""
import contextlib
import hashlib
import inspect
import math
import shutil
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, cast_training_params, compute_snr

from stylemix import params
from stylemix.adapters.load_check import adapter_deltas, check_lora_files
from stylemix.adapters.lora_files import WEIGHTS, add_lora, kohya_file, save_lora
from stylemix.adapters.tokens import add_tokens, save_tokens
from stylemix.data.conditioning import IDS, encode_text, text_encoders, unet_kwargs
from stylemix.data.latent_cache import LatentCache
from stylemix.data.prompts import with_trigger
from stylemix.errors import StyleMixError
from stylemix.families import FLOW, NAMES, architecture, denoiser, denoiser_name
from stylemix.images import contact_sheet
from stylemix.models.base_model import family, load_pipeline, pinned_source
from stylemix.outputs import atomic_dir, atomic_write
from stylemix.paths import CHECKPOINTS, LATENTS, LATENTS_FILE, LORAS, PRIOR, TRAIN_LOGS, latents_file
from stylemix.progress import progress
from stylemix.training import batches, checkpoints
from stylemix.training import flow as flow_matching
from stylemix.training.batches import Batches
from stylemix.training.model_card import kohya_metadata, model_card
from stylemix.training.quantize import frozen_out_of_ddp, quantize_frozen
from stylemix.training.timesteps import sample_timesteps
from stylemix.training.validation import adapters_off, heldout_loss, load_heldout

PRECISIONS = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}  # train.mixed_precision -> base_model.DTYPES
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def open_cache(path: Path, resolution: int, missing: str, stage: str) -> LatentCache:
    """A latent cache, refused in one line when `path` is missing (`missing` says why it was wanted)
    or was made at another resolution; `stage` is the dvc stage that makes it."""
    if not path.is_file():
        raise StyleMixError(f"{missing} ({path} missing); run `dvc repro {stage}`")
    cache = LatentCache(path)
    if cache.resolution != resolution:
        raise StyleMixError(f"{path} was encoded at {cache.resolution} px, not base.resolution = {resolution}; rerun `dvc repro {stage}`")
    return cache


def open_latents(name: str, resolution: int, latents: Path = LATENTS) -> LatentCache:
    return open_cache(latents_file(name, latents), resolution, f"style {name}: no cached latents", f"encode@{name}")


def open_prior(cfg: params.Prior | None, resolution: int, root: Path = PRIOR) -> LatentCache | None:
    """The prior stage's pictures when prior preservation is on, else None."""
    if cfg is None or not cfg.active:
        return None
    return open_cache(root / LATENTS_FILE, resolution, "prior preservation is on (prior.images / prior.folder) but has no pictures", "prior")


def prepare_models(p: params.Params, cfg: params.Train, device: torch.device, name: str, tokens: dict[str, str]):
    """The base pipeline, frozen, with fresh LoRA adapters and the style's new tokens; returns
    (pipe, trained modules, trainables, prompts): `prompts`, for FLUX.1 / SD 3.5, the validation
    prompts encoded once, after which the text encoders (T5 above all) are dropped, as training reads
    cached captions; None for the UNets, whose validation pictures are drawn from the text."""
    weight_dtype = DTYPES[cfg.mixed_precision]  # frozen base weights in the training precision; the LoRA stays float32
    flow = family(p.base) in FLOW
    # A flow model loads in that precision at once: FLUX.1's transformer alone is 48 GB in float32.
    pipe = load_pipeline(p.base, PRECISIONS[cfg.mixed_precision] if flow else "float32")
    pipe.set_progress_bar_config(disable=True)
    net, encoders, prompts = denoiser(pipe), text_encoders(pipe), None
    if flow:
        if tokens or p.lora.text_encoder:
            raise StyleMixError(f"{'styles.' + name + '.tokens' if tokens else 'lora.text_encoder'}: stylemix trains the "
                                f"transformer of {NAMES[architecture(pipe)]} only; leave it out")
        with torch.no_grad():
            prompts = flow_matching.encode_prompts(pipe, [with_trigger(q, params.style(p, name)) for q in cfg.validation_prompts], device)
        flow_matching.drop_text_encoders(pipe)
        encoders = []
    for module in (net, *encoders, pipe.vae):
        module.requires_grad_(False)
    if tokens:
        add_tokens(pipe, tokens, name)
    if cfg.quantize_base:  # cast where it is, then quantized a layer at a time on the device
        quantize_frozen(net.to(weight_dtype), cfg.quantize_base, p.lora.type, device)
    for module in (net, *encoders):
        module.to(device) if weight_dtype == torch.float32 else module.to(device, weight_dtype)
    set_seed(cfg.seed)  # the LoRA's random initialisation
    add_lora(net, encoders, p.lora)
    if cfg.quantize_base:
        frozen_out_of_ddp(net)
    trained = [net, *encoders] if p.lora.text_encoder or tokens else [net]
    cast_training_params(trained, dtype=torch.float32)
    if cfg.channels_last and not flow:
        net.to(memory_format=torch.channels_last)
        if p.lora.type == "dora":  # peft's DoRA convolutions `view` their factors, which channels_last forbids
            for param in net.parameters():
                if param.requires_grad:
                    param.data = param.data.contiguous()
    if cfg.gradient_checkpointing:
        net.enable_gradient_checkpointing()
        for encoder in trained[1:]:
            encoder.gradient_checkpointing_enable()
    trainables = {f"{prefix}.{k}": v for prefix, m in zip(("unet", "text_encoder", "text_encoder_2"), trained)
                  for k, v in m.named_parameters() if v.requires_grad}
    return pipe, trained, trainables, prompts


def make_optimizer(trainables: dict, cfg: params.Train, device: torch.device) -> torch.optim.Optimizer:
    """One parameter group each for the UNet's LoRA, the text encoders' LoRA and the new tokens'
    embeddings, each at its own lr; no weight decay on embeddings, which would shrink them."""
    def part(key: str) -> str:
        return "unet" if key.startswith("unet.") else "tokens" if key.endswith(".token_embedding.new") else "text"
    settings = {"unet": {"lr": cfg.lr}, "text": {"lr": cfg.text_encoder_lr or cfg.lr},
                "tokens": {"lr": cfg.token_lr, "weight_decay": 0.0}}
    groups = [{"params": [v for k, v in trainables.items() if part(k) == name]} | group for name, group in settings.items()]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer in params.OPTIMIZERS:
        return collection_optimizer(groups, cfg)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb

            if device.type == "cuda":
                return bnb.optim.AdamW8bit(groups, weight_decay=cfg.weight_decay)
        except ImportError:
            pass
        print("warning: train.optimizer = adamw8bit needs bitsandbytes and a CUDA GPU; using torch AdamW")
    # Fused AdamW is the known win on CUDA; on the CPU it measured no better or worse (bench/train_step.py).
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=device.type == "cuda")


def collection_optimizer(groups: list[dict], cfg: params.Train) -> torch.optim.Optimizer:
    """An optimizer of pytorch-optimizer, with train.weight_decay and train.optimizer_args; every
    argument it is given must be one it names (the collection's classes swallow unknown ones)."""
    import pytorch_optimizer

    cls = getattr(pytorch_optimizer, params.OPTIMIZERS[cfg.optimizer])
    known = [k for k, v in inspect.signature(cls).parameters.items() if k != "params" and v.kind != v.VAR_KEYWORD]
    if unknown := sorted(set(cfg.optimizer_args) - set(known)):
        raise StyleMixError(f"train.optimizer_args: {cfg.optimizer} takes no {', '.join(unknown)}; "
                            f"it takes {', '.join(known)}")
    args = {"weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adafactor":  # train.lr as given, not Adafactor's relative step size; in this collection
        args |= {"relative_step": False, "scale_parameter": True}  # scale_parameter=False scales lr by the weights' RMS
    if cfg.optimizer == "schedule_free_adamw":  # it replaces the schedule, warm-up included (params.Train)
        args["warmup_steps"] = cfg.warmup_steps
    args |= {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.optimizer_args.items()}
    if cfg.optimizer == "prodigy" and cfg.lr < 0.1:
        print(f"warning: train.optimizer prodigy finds its own step size and expects train.lr near 1.0, not {cfg.lr:g}")
    try:
        return cls(groups, **args)
    except (TypeError, ValueError) as err:
        raise StyleMixError(f"train.optimizer_args {cfg.optimizer_args} for {cfg.optimizer}: {err}") from None


def run_id(p: params.Params, style: params.Style, cfg: params.Train, world: int, latents_file: Path,
           prior_file: Path | None = None) -> str:
    """What a checkpoint must match to be resumed: code, base model, data and every setting that
    changes the numbers (not how often to checkpoint or validate, nor torch.compile)."""
    settings = cfg.model_dump(exclude={"checkpoint_every", "keep_checkpoints", "validation_prompts",
                                       "validation_steps", "validate_every", "compile"})
    digest = lambda path: hashlib.sha256(Path(path).read_bytes()).hexdigest()  # noqa: E731
    return checkpoints.fingerprint({
        "code": [digest(__file__), digest(checkpoints.__file__), digest(batches.__file__)],
        "base": pinned_source(p.base.model, p.base.revision),
        "lora": p.lora.model_dump(), "train": settings, "world": world, "latents": digest(latents_file),
        "tokens": style.tokens, "repeats": style.repeats,
        **({"prior": [digest(prior_file), p.prior.weight]} if prior_file else {})})


def open_live(folder: Path, history: list[dict], images: Path | None = None):
    """dvclive logger for the loss and lr curves and validation images, replaying the history (and
    the images a checkpoint kept) behind resumed weights.
    Imported here: the GPU benchmark's machine has no dvc (bench/gpu_train.py)."""
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    shutil.rmtree(folder, ignore_errors=True)
    try:
        live = Live(str(folder), save_dvc_exp=False, dvcyaml=None)
    except SCMError as err:  # dvclive reads HEAD and fails in a git repo without commits
        raise StyleMixError(f"dvclive cannot log in this git repo ({err}): make a first commit") from None
    (Path(live.plots_dir) / "images").mkdir(parents=True, exist_ok=True)  # a declared DVC plot, images or none
    for row in history:
        log_row(live, row)
    for image in sorted(images.rglob("*.png")) if images else []:
        live.log_image(str(image.relative_to(images)), image)
    return live


def log_row(live, row: dict) -> None:
    live.step = row["step"]
    for key in ("loss", "lr", "val_loss"):  # val_loss: every train.validate_every steps
        if key in row:
            live.log_metric(key, row[key])


def diffusion_loss(unet, noise_scheduler, batch: dict, cfg: params.Train, gen: torch.Generator,
                   encoders: list | None = None) -> torch.Tensor:
    """Noise a batch's cached latents (LatentCache.rows) at random timesteps and score the denoiser's
    prediction: a UNet's noise (or velocity) min-SNR weighted, a flow transformer's velocity weighted
    by train.timesteps.weighting (stylemix.training.flow)."""
    device = gen.device
    b = len(batch["mean"])
    flip = (torch.rand(b, generator=gen, device=device) < 0.5) if cfg.random_flip else torch.zeros(b, dtype=torch.bool, device=device)
    pick = lambda key: torch.where(flip[:, None, None, None], batch[key + "_flipped"], batch[key])  # noqa: E731
    latents = pick("mean") + pick("std") * torch.randn(pick("mean").shape, generator=gen, device=device)
    drop = torch.rand(b, generator=gen, device=device) < cfg.caption_dropout
    caption = lambda key: torch.where(drop.view(-1, *[1] * (batch[key].dim() - 1)), batch["empty_" + key], batch[key])  # noqa: E731
    if encoders is None:  # frozen text encoders: their cached output
        cond, pooled = caption("text_hidden"), caption("text_pooled") if "text_pooled" in batch else None
    else:
        cond, pooled = encode_text(encoders, [caption(k) for k in IDS[: len(encoders)]])
    noise = torch.randn(latents.shape, generator=gen, device=device)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn((b, latents.shape[1], 1, 1), generator=gen, device=device)
    flow = isinstance(noise_scheduler, FlowMatchEulerDiscreteScheduler)
    if flow:
        loss, weight_by_sigma = flow_matching.loss(unet, noise_scheduler.config, latents, noise, cond, pooled, cfg, gen)
    else:
        t = sample_timesteps(cfg.timesteps, noise_scheduler.config.num_train_timesteps, b, gen)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        v_pred = noise_scheduler.config.prediction_type == "v_prediction"
        target = noise_scheduler.get_velocity(latents, noise, t) if v_pred else noise
        pred = unet(noisy, t, cond, **unet_kwargs(pooled, batch["time_ids"] if pooled is not None else None)).sample
        loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    if cfg.masked_loss.enabled:  # a weighted mean: an image's loss per unit of the area it counts
        mask = torch.where(flip[:, None, None, None], batch["mask"].flip(-1), batch["mask"])
        weight = cfg.masked_loss.unmasked_weight + (1 - cfg.masked_loss.unmasked_weight) * mask
        loss = (loss * weight).sum(dim=(1, 2, 3)) / (weight.sum(dim=(1, 2, 3)) * loss.shape[1]).clamp(min=1e-8)
    else:
        loss = loss.mean(dim=(1, 2, 3))
    if flow:
        return (loss * weight_by_sigma).mean()
    if cfg.min_snr_gamma or cfg.debiased_estimation:
        snr = compute_snr(noise_scheduler, t)
    if cfg.min_snr_gamma:
        loss = loss * torch.clamp(snr, max=cfg.min_snr_gamma) / (snr + 1 if v_pred else snr)
    if cfg.debiased_estimation:  # global colour and layout are decided at the noisy end
        loss = loss / (snr + 1 if v_pred else snr).clamp(max=1000).sqrt()
    return loss.mean()


def validation_images(pipe, prompts: list[str], style: params.Style, resolution: int, steps: int, device,
                      encoded: dict | None = None) -> list:
    """The validation prompts drawn with the trained adapters, prompt i at seed i; FLUX.1 / SD 3.5 from
    their `encoded` prompts (prepare_models), as their text encoders are gone."""
    net = denoiser(pipe)
    was_training = net.training
    net.eval()
    pipe.to(device)
    with torch.autocast(device.type, enabled=net.dtype != torch.float32):
        if encoded is not None:
            images = flow_matching.draw(pipe, encoded, resolution, steps, device)
        else:
            images = [pipe(with_trigger(p, style), num_inference_steps=steps, height=resolution, width=resolution,
                           generator=torch.Generator(device).manual_seed(i)).images[0] for i, p in enumerate(prompts)]
    net.train(was_training)
    return images


def train_style(name: str, p: params.Params, on_step=None, out: Path = LORAS, ckpt_root: Path = CHECKPOINTS,
                logs: Path = TRAIN_LOGS, latents: Path = LATENTS, prior_dir: Path = PRIOR) -> dict:
    """Train the style's LoRA; returns the pipeline holding it and a summary."""
    cfg, style = params.train_for(p, name), params.style(p, name)
    cache = open_latents(name, p.base.resolution, latents)
    prior = open_prior(p.prior, p.base.resolution, prior_dir)
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise StyleMixError("train.mixed_precision = fp16 needs a CUDA GPU; use bf16 or no on the CPU")
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, dynamo_backend="inductor" if cfg.compile else "no")
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    n, shapes = len(cache), list(cache.buckets)
    order = Batches(list(cache.buckets.values()), cfg, world, rank, style.repeats)
    per_epoch = order.per_epoch
    in_buckets = f" (buckets {', '.join(f'{b}: {c}' for b, c in cache.buckets.items())})" if len(shapes) > 1 else ""
    if not per_epoch:
        raise StyleMixError(f"style {name}: {n} images x {style.repeats} repeats{in_buckets}, fewer than one step's batch "
                            f"(train.batch_size {cfg.batch_size} x {world} processes x accumulation {cfg.gradient_accumulation}); "
                            f"raise styles.{name}.repeats or lower the batch")
    if unfilled := [b for b, c in cache.buckets.items() if c * style.repeats < cfg.batch_size]:
        accelerator.print(f"warning: style {name}: bucket(s) {', '.join(unfilled)} hold fewer images x repeats than "
                          f"train.batch_size {cfg.batch_size}, so training never sees them; raise styles.{name}.repeats, "
                          "lower the batch or make fewer buckets (a larger base.buckets.step)")
    total = cfg.max_steps or cfg.epochs * per_epoch
    if prior:  # each step also learns a batch of the base's own pictures, in their own seeded order
        prior_order, prior_shapes = Batches(list(prior.buckets.values()), cfg, world, rank), list(prior.buckets)
        if not prior_order.per_epoch:
            raise StyleMixError(f"prior: {len(prior)} pictures, fewer than one step's batch (train.batch_size {cfg.batch_size} "
                                f"x {world} processes x accumulation {cfg.gradient_accumulation}); raise prior.images")
        prior_cfg = cfg.model_copy(update={"masked_loss": params.MaskedLoss()})  # a prior picture counts whole
    if cfg.masked_loss.enabled and not any("mask" in keys for keys in cache.keys.values()):
        raise StyleMixError(f"style {name}: train.masked_loss needs transparent images (PNGs with alpha), and none of its "
                            f"{len(cache)} images is; turn it off for this style (styles.{name}.train.masked_loss.enabled: false)")

    pipe, trained, trainables, prompts = prepare_models(p, cfg, device, name, style.tokens)
    flow = architecture(pipe) in FLOW
    flow_matching.check_settings(cfg, architecture(pipe))
    optimizer = make_optimizer(trainables, cfg, device)
    schedule_free = cfg.optimizer == "schedule_free_adamw"  # its warm-up is its own
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=0 if schedule_free else cfg.warmup_steps,
                              num_training_steps=total)
    ema = EMAModel(trainables.values(), decay=cfg.ema.decay, use_ema_warmup=cfg.ema.warmup,
                   power=cfg.ema.power) if cfg.ema.enabled else None
    prepared = accelerator.prepare(*trained, optimizer)
    model, te_models, optimizer = prepared[0], list(prepared[1:-1]) or None, prepared[-1]
    if flow:
        noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    else:
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    gen = torch.Generator(device).manual_seed(cfg.seed * 1_000 + rank)

    # The held-out loss, on the main process only, of the unwrapped modules (no other process waits).
    # The base's first, before a checkpoint puts trained token embeddings in.
    validate = None
    if accelerator.is_main_process and (held := load_heldout(name, latents)):
        unet, encoders = accelerator.unwrap_model(model), [accelerator.unwrap_model(te) for te in te_models or []]
        vcfg = p.validation or params.Validation()  # the stage declares it; tests may leave it out
        validate = partial(heldout_loss, unet, noise_scheduler, held.groups(), vcfg.timesteps, vcfg.seed, encoders or None)
        with adapters_off(unet, *encoders):
            base_loss = validate()  # the base model (new tokens at their start) on the held-out images
    run = run_id(p, style, cfg, world, latents_file(name, latents), prior.path if prior else None)
    ckpt_dir = ckpt_root / name
    step, history, kept_images = 0, [], None
    if found := checkpoints.latest(ckpt_dir, run, accelerator.process_index):
        resume, saved = found
        step, history = checkpoints.load(saved, accelerator, trainables, optimizer, scheduler, gen, ema)
        kept_images = resume / checkpoints.IMAGES
        accelerator.print(f"train {name}: resuming from {resume}")
    elif accelerator.is_main_process and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # checkpoints of other settings: never resumed
    live = open_live(logs / name, history, kept_images) if accelerator.is_main_process else None
    model.train()
    if schedule_free:
        optimizer.train()  # its weights are the interpolation it steps; eval() swaps in the average it returns
    started, first_step = time.perf_counter(), step
    per_step = cfg.batch_size * world * cfg.gradient_accumulation  # images a step
    with progress("images", "loss", "lr", unit="steps", disable=not accelerator.is_main_process) as bar:
        task = bar.add_task(f"train {name} ({n} images x {style.repeats} an epoch{in_buckets})", total=total, completed=step,
                            images="-", loss="-", lr="-")
        while step < total:
            losses = []
            for micro in range(cfg.gradient_accumulation):
                bucket, rows = order(step, micro)
                batch = {k: v.to(device) for k, v in cache.rows(shapes[bucket], rows, variant=step // per_epoch).items()}
                last = micro == cfg.gradient_accumulation - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss = diffusion_loss(model, noise_scheduler, batch, cfg, gen, te_models)
                    if prior:
                        at, rows = prior_order(step, micro)
                        drawn = {k: v.to(device) for k, v in prior.rows(prior_shapes[at], rows).items()}
                        loss = loss + p.prior.weight * diffusion_loss(model, noise_scheduler, drawn, prior_cfg, gen, te_models)
                    losses.append(accelerator.reduce(loss.detach(), "mean").item())
                    if not math.isfinite(losses[-1]):
                        raise StyleMixError(
                            f"train {name}: loss is {losses[-1]} at step {step + 1} with mixed_precision = "
                            f"{cfg.mixed_precision}; set train.mixed_precision: no or lower train.lr "
                            f"({cfg.lr:g}); the last good checkpoint is in {ckpt_dir}")
                    accelerator.backward(loss / cfg.gradient_accumulation)
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(list(trainables.values()), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema:
                ema.step(trainables.values())
            step += 1
            history.append({"step": step, "loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0]})
            if validate and cfg.validate_every and step % cfg.validate_every == 0:
                history[-1]["val_loss"] = validate()["mean"]
            if live:
                log_row(live, history[-1])
                if cfg.validate_every and step % cfg.validate_every == 0:
                    images = validation_images(pipe, cfg.validation_prompts, style, p.base.resolution, cfg.validation_steps,
                                               device, prompts)
                    for i, img in enumerate(images):
                        live.log_image(f"step-{step:06d}/validation_{i}.png", img)
            rate = (step - first_step) * per_step / (time.perf_counter() - started)
            bar.update(task, advance=1, images=f"{rate:.1f}/s", loss=f"{history[-1]['loss']:.4f}", lr=f"{history[-1]['lr']:.2e}")
            if step % cfg.checkpoint_every == 0 or step == total:
                checkpoints.save(ckpt_dir, step, accelerator, trainables, optimizer, scheduler, gen, history, run,
                                 cfg.keep_checkpoints, Path(live.plots_dir) / "images" if live else None, ema)
            if on_step:
                on_step(step, trainables)
    seconds = time.perf_counter() - started
    if schedule_free:
        optimizer.eval()
    if ema:  # the saved LoRA, and the held-out loss below, are the average's
        ema.copy_to(trainables.values())
    summary = {"steps": total, "final_loss": history[-1]["loss"],
               "mean_loss_last_10": sum(h["loss"] for h in history[-10:]) / len(history[-10:])}
    if validate:
        final = validate()
        summary |= {"val_loss": final["mean"], "val_loss_base": base_loss["mean"], "val_loss_by_timestep": final,
                    "val_loss_base_by_timestep": base_loss}
    if accelerator.is_main_process:
        live.summary.update(summary)
        live.end()
        setattr(pipe, denoiser_name(pipe), accelerator.unwrap_model(model))
        for component, te in zip(("text_encoder", "text_encoder_2"), te_models or []):
            setattr(pipe, component, accelerator.unwrap_model(te))
        save_outputs(out / name, name, pipe, p, cfg, run, total, n, cache.max_token_length, len(prior) if prior else 0, prompts)
        ran = step - first_step  # 0 when resumed from the final checkpoint
        accelerator.print(f"train {name}: {ran} of {total} steps in {seconds:.1f}s ({ran / seconds:.2f} steps/s), "
                          f"final loss {summary['final_loss']:.4f} -> {out / name}/")
    accelerator.wait_for_everyone()
    state = [v for per_param in optimizer.state.values() for v in per_param.values()] + (ema.shadow_params if ema else [])
    state_bytes = sum(v.numel() * v.element_size() for v in state if torch.is_tensor(v))  # what the options differ by
    return summary | {"pipe": pipe, "trainables": trainables, "seconds": seconds, "state_bytes": state_bytes}


def save_outputs(folder: Path, name: str, pipe, p: params.Params, cfg: params.Train, run: str, steps: int, images: int,
                 max_tokens: int = 75, prior_images: int = 0, prompts: dict | None = None) -> None:
    """The LoRA in both layouts (FLUX.1 / SD 3.5: diffusers' and ComfyUI's), validation images (a flow
    model's from its encoded `prompts`) and a model card, all or nothing."""
    style = params.style(p, name)
    info = {"style": name, "trigger": style.trigger, "template": style.template, "base_model": p.base.model,
            "resolution": p.base.resolution, "steps": steps, "images": images, "repeats": style.repeats,
            "type": p.lora.type, "rank": p.lora.rank, "alpha": p.lora.alpha, "targets": p.lora.targets,
            **({"conv_rank": p.lora.conv_rank, "conv_alpha": p.lora.conv_alpha_or_rank} if p.lora.conv_rank else {}),
            "text_encoder": p.lora.text_encoder, "tokens": style.tokens, "params_hash": run, "max_token_length": max_tokens,
            "prior": {"images": prior_images, "weight": p.prior.weight} if prior_images else None,
            "train": cfg.model_dump(include={"optimizer", "optimizer_args", "lr", "scheduler", "timesteps", "ema", "masked_loss", "min_snr_gamma",
                                             "noise_offset", "debiased_estimation", "seed"}),
            "architecture": architecture(pipe)}
    flow = architecture(pipe) in FLOW
    if not flow:  # the flow models draw with their own (flow-matching Euler) scheduler
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    with atomic_dir(folder) as tmp:
        save_lora(tmp, name, pipe, info, kohya_metadata(p, cfg, info))
        check_lora_files(tmp, [WEIGHTS, kohya_file(name, architecture(pipe))], pipe, adapter_deltas(pipe), folder)  # both load back as trained, or stop
        if style.tokens:
            save_tokens(tmp, pipe, list(style.tokens))
        device = next(denoiser(pipe).parameters()).device
        images = validation_images(pipe, cfg.validation_prompts, style, p.base.resolution, cfg.validation_steps, device, prompts)
        labels = [with_trigger(q, style) for q in cfg.validation_prompts]
        contact_sheet(list(zip(images, labels)), tile=192).save(tmp / "validation.png")
        atomic_write(tmp / "README.md", model_card(name, style, p, cfg, info))
