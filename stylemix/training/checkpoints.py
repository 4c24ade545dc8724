"""Training checkpoints: everything a killed run needs to go on exactly where it stopped.

A checkpoint is a folder step-NNNNNN/ holding the trainable (LoRA) weights, the optimizer, LR
scheduler, loss-scaler and EMA states, each process's random generator, the loss history and a
fingerprint of the run's settings. It appears only when complete (written aside, then renamed),
and one whose fingerprint differs from the current run's is never resumed.
"""
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

IMAGES = "images"  # a checkpoint's copy of the validation images logged up to its step


def fingerprint(facts: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _steps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())


def save(folder: Path, step: int, accelerator, trainables: dict[str, torch.Tensor], optimizer, scheduler,
         generator: torch.Generator, history: list[dict], print_: str, keep: int, images: Path | None = None,
         ema=None) -> None:
    """Write checkpoint `step` from every process; the main process publishes it and prunes old ones."""
    final, tmp = folder / f"step-{step:06d}", folder / f".step-{step:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(generator.get_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in trainables.items()}, tmp / "lora.safetensors")
        states = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        if accelerator.scaler is not None:
            states["scaler"] = accelerator.scaler.state_dict()
        if ema is not None:
            states["ema"] = ema.state_dict()
        torch.save(states, tmp / "states.pt")
        if images is not None and images.is_dir():
            shutil.copytree(images, tmp / IMAGES)
        (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": print_, "history": history}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp.rename(final)
        for old in _steps(folder)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def latest(folder: Path, print_: str) -> Path | None:
    """The newest complete checkpoint of this very run, if any."""
    matching = [p for p in _steps(folder) if json.loads((p / "state.json").read_text())["fingerprint"] == print_]
    return matching[-1] if matching else None


def load(path: Path, accelerator, trainables: dict[str, torch.Tensor], optimizer, scheduler,
         generator: torch.Generator, ema=None) -> tuple[int, list[dict]]:
    """Restore a checkpoint in place; returns (step, loss history)."""
    weights = load_file(path / "lora.safetensors")
    with torch.no_grad():
        for name, param in trainables.items():
            param.copy_(weights[name])
    states = torch.load(path / "states.pt", weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    if "scaler" in states and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(states["scaler"])
    if ema is not None:
        ema.load_state_dict(states["ema"])
    generator.set_state(torch.load(path / f"rng-{accelerator.process_index}.pt", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    return state["step"], state["history"]
