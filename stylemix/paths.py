"""Where the project's files live, relative to the repo root: every stage and command asks here,
none asks another stage. dvc.yaml's outs name the same folders."""
from pathlib import Path

PARAMS_FILE = Path("params.yaml")

SAMPLE = Path("data/sample")  # sample: the demo's style folders
TRUTH = Path("data/truth")  # sample: every held-out subject in every look (stylemix.evaluation.ground_truth)
FILTERED = Path("data/filtered")  # filter@S: data/filtered/<style>/ with index.jsonl
CAPTIONS = Path("data/captions")  # caption@S: data/captions/<style>/metadata.jsonl
LATENTS = Path("data/latents")  # encode@S: data/latents/<style>/latents.safetensors
LATENTS_FILE = "latents.safetensors"
HELDOUT_FILE = "heldout.safetensors"  # the style's held-out images, never trained on
PRIOR = Path("data/prior")  # prior: the base's own pictures (images/) and their latents.safetensors, for prior preservation

BASE_DIR = Path("models/base")  # base: `tiny` itself, and source.json for any model
PRETRAINED_TINY = Path(__file__).parent / "pretrained" / "tiny"  # committed; made by python -m stylemix.demo.pretrain
PRETRAINED_TINY_CLIP = Path(__file__).parent / "pretrained" / "tiny-clip"  # committed; python -m stylemix.demo.pretrain_clip
LORAS = Path("models/lora")  # train@S: models/lora/<style>/
MERGED = Path("models/merged")  # merge@C: models/merged/<combo>/
COMPONENTS = "components"  # in a scheduled combination's folder: its styles' LoRAs, drawn live
CHECKPOINTS = Path("models/checkpoints")  # train@S's resumable state: git-ignored, outside DVC

REPORTS = Path("reports")
FILTER_REPORTS = REPORTS / "filter"  # filter@S: reports/filter/<style>/
TRAIN_LOGS = REPORTS / "train"  # train@S: dvclive's reports/train/<style>/
IMAGES = REPORTS / "images"  # generate@M: reports/images/<model>/
TOKEN_IMAGES = "tokens"  # and, for a model with new tokens, reports/images/<model>/tokens/
STRENGTH_IMAGES = "strengths"  # a style's or combination's images at generate.strengths other than 1
SCORE_PLOTS = REPORTS / "plots" / "scores"  # score: one bar chart per metric
VALIDATION = REPORTS / "validation.json"  # validate: every LoRA on every style's held-out images
VALIDATION_PLOT = REPORTS / "plots" / "validation.png"
GRIDS = REPORTS / "grids"  # report: the comparison grids
EXPLORE = REPORTS / "explore"  # explore@P: reports/explore/<pair>/ (metrics.json, points.csv, plots/)
SWEEP = REPORTS / "sweep"  # `stylemix sweep`: drawn on demand, git-ignored
UI_OUT = REPORTS / "ui"  # `stylemix ui`: drawn on demand, git-ignored


def latents_file(style: str, root: Path = LATENTS) -> Path:
    return root / style / LATENTS_FILE


def heldout_file(style: str, root: Path = LATENTS) -> Path:
    return root / style / HELDOUT_FILE


def image_name(prompt_index: int, seed: int) -> str:
    return f"p{prompt_index}_s{seed}.png"


def token_image_name(token_index: int, prompt_index: int, seed: int) -> str:
    return f"t{token_index}_p{prompt_index}_s{seed}.png"


def strength_image_name(strength: float, prompt_index: int, seed: int) -> str:
    return f"w{strength:g}_p{prompt_index}_s{seed}.png"
