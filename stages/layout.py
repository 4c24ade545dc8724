"""Where the comparison images and reports live, shared by generate, score, report and sweep
without importing one another (report and sweep then start without torch and diffusers)."""
from pathlib import Path

REPORTS = Path("reports")
IMAGES = REPORTS / "images"  # generate@M writes reports/images/<model>/
TOKEN_IMAGES = "tokens"  # and, for a model with new tokens, reports/images/<model>/tokens/


def image_name(prompt_index: int, seed: int) -> str:
    return f"p{prompt_index}_s{seed}.png"


def token_image_name(token_index: int, prompt_index: int, seed: int) -> str:
    return f"t{token_index}_p{prompt_index}_s{seed}.png"
