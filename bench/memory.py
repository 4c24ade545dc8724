"""Benchmark: memory of one LoRA training step on the real SD 1.5 architecture (860M-parameter UNet,
123M-parameter CLIP text encoder, randomly initialised from their configs: no download) at 512 px,
per setting: precision of the frozen weights, batch size, gradient checkpointing. Each setting runs
in its own process; peak_gb is the peak resident memory during the step minus the process's memory
after imports, i.e. weights + activations + LoRA gradients + AdamW state (Linux /proc counters). Measured on the CPU: on a GPU
add the CUDA context (~0.5-1 GB) and the allocator's slack. The baseline is the same run's first row.

    python bench/memory.py              # ~10 min on 2 CPU cores; writes bench/results/memory.json
"""
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "memory.json"
SETTINGS = [  # (precision, batch size, gradient checkpointing)
    ("no", 1, False), ("bf16", 1, False), ("bf16", 1, True), ("bf16", 2, False), ("bf16", 2, True), ("bf16", 4, True),
]


def status_gb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak since the last reset) of this process, in GiB."""
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 2**20


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM restarts from the current RSS


def one_step(precision: str, batch: int, checkpointing: bool, rank: int = 32, resolution: int = 512) -> dict:
    """Mirrors stylemix.training.loop.prepare_models and one optimizer step, on SD 1.5-sized modules."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import cast_training_params
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(ROOT))
    from stylemix import params
    from stylemix.adapters.lora_files import add_lora
    from stylemix.training.loop import DTYPES

    after_imports = status_gb("VmRSS")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=resolution // 8, cross_attention_dim=768)  # SD 1.5's config
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, max_position_embeddings=77))
    for module in (unet, text_encoder):
        module.requires_grad_(False)
        module.to(DTYPES[precision])
    add_lora(unet, [text_encoder], params.Lora(rank=rank, alpha=rank / 2))
    cast_training_params([unet], dtype=torch.float32)
    unet.to(memory_format=torch.channels_last)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    latents = torch.randn(batch, 4, resolution // 8, resolution // 8)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        cond = text_encoder(torch.randint(0, 49408, (batch, 77))).last_hidden_state
    weights = status_gb("VmRSS") - after_imports
    reset_peak()  # building in float32 and casting is not what a GPU run holds
    start = time.perf_counter()
    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        pred = unet(latents, torch.randint(0, 1000, (batch,)), cond).sample
    F.mse_loss(pred.float(), latents).backward()
    optimizer.step()
    return {"precision": precision, "batch_size": batch, "gradient_checkpointing": checkpointing,
            "lora_rank": rank, "resolution": resolution, "weights_gb": round(weights, 2), "peak_gb": round(status_gb("VmHWM") - after_imports, 2),
            "cpu_step_s": round(time.perf_counter() - start, 1),
            "lora_params_m": round(sum(p.numel() for p in trainable) / 1e6, 2)}


def main() -> None:
    if len(sys.argv) == 2:  # one setting, in a fresh process
        print(json.dumps(one_step(*json.loads(sys.argv[1]))))
        return
    rows = []
    for setting in SETTINGS:
        run = subprocess.run([sys.executable, __file__, json.dumps(setting)], capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"error: setting {setting} failed:\n{run.stderr[-2000:]}")
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    for row in rows:
        row["vs_first"] = round(row["peak_gb"] / rows[0]["peak_gb"], 2)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"model": "SD 1.5 architecture (UNet 860M + CLIP-L text encoder), 512 px, "
                                        "LoRA rank 32 on attention, AdamW", "device": "cpu", "rows": rows},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
