"""train@S: one LoRA per style on the frozen base model, from the latents encode@S cached
(stylemix.training.loop). `accelerate launch --num_processes N -m stages.train STYLE` runs it on
several GPUs (or CPU processes)."""
import sys

from stylemix import gpu, params
from stylemix.errors import StyleMixError, run_stage
from stylemix.training.loop import train_style


def main() -> None:
    if len(sys.argv) != 2:
        raise StyleMixError("usage: python -m stages.train STYLE")
    p = params.load("base", "styles", "lora", "train", "validation", "prior")
    gpu.claim()  # before accelerate initialises CUDA
    train_style(sys.argv[1], p)


if __name__ == "__main__":
    run_stage(main)
