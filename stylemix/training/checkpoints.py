"""Training checkpoints: everything a killed run needs to go on exactly where it stopped.

A checkpoint is a folder step-NNNNNN/ holding the trainable (LoRA) weights, the optimizer, LR
scheduler, loss-scaler and EMA states, each process's random generator, the loss history and a
fingerprint of the run's settings. It appears only when complete (written aside, then renamed),
one whose fingerprint differs from the current run's is never resumed, and one that cannot be read
is passed over for the one before.
"""
import io
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from stylemix.outputs import room_for

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
    try:
        with room_for(final):  # a full disk: one line, and the checkpoints before it stay as they were
            _torch_save(generator.get_state(), tmp / f"rng-{accelerator.process_index}.pt")
            if accelerator.is_main_process:
                weights = {k: v.detach().float().cpu().contiguous() for k, v in trainables.items()}
                (tmp / "lora.safetensors").write_bytes(safetensors_bytes(weights))
                states = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
                if accelerator.scaler is not None:
                    states["scaler"] = accelerator.scaler.state_dict()
                if ema is not None:
                    states["ema"] = ema.state_dict()
                _torch_save(states, tmp / "states.pt")
                if images is not None and images.is_dir():
                    shutil.copytree(images, tmp / IMAGES)
                (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": print_, "history": history}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)  # an unreadable one latest() passed over
        tmp.rename(final)
        for old in _steps(folder)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _torch_save(obj, path: Path) -> None:
    """torch.save through memory: its own writer reports a full disk as an opaque RuntimeError."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.write_bytes(buffer.getvalue())


def latest(folder: Path, print_: str, process_index: int = 0) -> tuple[Path, dict] | None:
    """The newest readable checkpoint of this very run, read whole, if any. One that cannot be read
    (a disk that lost its last writes, a file damaged since) is passed over for the one before, in
    one line, and never half-loaded: load() applies only what was read completely."""
    for path in reversed(_steps(folder)):
        try:
            state = json.loads((path / "state.json").read_text())
            if state["fingerprint"] != print_:
                continue
            rngs = {rng.name: torch.load(rng, weights_only=True) for rng in sorted(path.glob("rng-*.pt"))}  # all, so every process decides alike
            return path, {"state": state, "weights": load_file(path / "lora.safetensors"), "rng": rngs[f"rng-{process_index}.pt"],
                          "states": torch.load(path / "states.pt", weights_only=True)}
        except Exception as err:  # noqa: BLE001  anything unreadable: safetensors, pickle, JSON, a missing file
            if process_index == 0:
                print(f"train: {path} is unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                      f"passing over it for the checkpoint before")
    return None


def load(saved: dict, accelerator, trainables: dict[str, torch.Tensor], optimizer, scheduler,
         generator: torch.Generator, ema=None) -> tuple[int, list[dict]]:
    """Restore a checkpoint that latest() read; returns (step, loss history)."""
    with torch.no_grad():
        for name, param in trainables.items():
            param.copy_(saved["weights"][name])
    states = saved["states"]
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    if "scaler" in states and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(states["scaler"])
    if ema is not None:
        ema.load_state_dict(states["ema"])
    generator.set_state(saved["rng"])
    return saved["state"]["step"], saved["state"]["history"]
