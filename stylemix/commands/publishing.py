"""Publishing a trained style or combination to the Hugging Face Hub: the folder that is uploaded
(the LoRA in both layouts, its tokens, sample images from the report, a model card) and the upload.

The card's metadata is huggingface_hub's own ModelCardData (base model when it is a hub id, the
trigger words as `instance_prompt`, a `widget` of the report's images), so the hub reads it as it
reads diffusers' LoRA cards; its body says how the LoRA was trained and how it scored.
"""
import json
import shutil
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from PIL import Image

from stylemix.adapters.loading import read_info
from stylemix.adapters.lora_files import kohya_file, kohya_readers
from stylemix.errors import StyleMixError
from stylemix.families import FLUX, SD3, SD15, SDXL
from stylemix.outputs import atomic_dir
from stylemix.params import model_kind
from stylemix.paths import IMAGES, REPORTS, VALIDATION

SAMPLES = 4  # images from the report shown on the card
HUB_TAGS = {SD15: "stable-diffusion", SDXL: "stable-diffusion-xl", FLUX: "flux", SD3: "sd3"}  # the hub's model tags


def scores_section(name: str, metrics: Path = REPORTS / "metrics.json", validation: Path = VALIDATION) -> str:
    """The report's numbers for this model: CLIP score, gain over base, held-out validation loss."""
    lines = []
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        if mine := m["models"].get(name):
            clip = mine["clip_score"]
            lines.append(f"- CLIP score {clip['mean']:.3f} (95% interval {clip['ci_low']:.3f} to {clip['ci_high']:.3f}), "
                         f"scored by {m['scorer']['clip_model']}")
            if "style_gain_over_base" in mine:
                lines.append(f"- style similarity gain over the base model: {mine['style_gain_over_base']:+.3f}")
    if validation.is_file():
        v = json.loads(validation.read_text())
        if name in v["loss"] and name in v["loss"].get("base", {}):
            own, base = v["loss"][name][name], v["loss"]["base"][name]
            lines.append(f"- held-out validation loss on its own style: {own:.4f} (base model {base:.4f}, "
                         f"{100 * (own - base) / base:+.0f}%)")
    return "## Scores\n\n" + ("\n".join(lines) if lines else "No report yet: run `dvc repro` before publishing.") + "\n"


def card(name: str, folder: Path, samples: list[tuple[str, str]]) -> ModelCard:
    info = read_info(folder)
    triggers = list((info.get("triggers") or {name: info.get("trigger")}).values())
    base, arch = info.get("base_model", ""), info.get("architecture", SD15)
    data = ModelCardData(
        base_model=base if model_kind(base) == "hub" else None, library_name="diffusers", license="other",
        tags=["text-to-image", HUB_TAGS[arch], "lora", "diffusers", "template:sd-lora", "stylemix"],
        instance_prompt=", ".join(t for t in triggers if t),
        widget=[{"text": prompt, "output": {"url": path}} for path, prompt in samples] or None)
    own = folder / "README.md"
    if own.is_file():
        body = own.read_text()
    else:
        parts = ", ".join(f"{s} x {w:g}" for s, w in info.get("components", {}).items())
        body = (f"# {name} LoRA (stylemix combination)\n\n{info.get('method', 'linear')} merge of {parts}; "
                f"trigger words: {', '.join(f'`{t}`' for t in triggers)}.\n\n"
                f"```python\npipe.load_lora_weights(\"{name}\")   # {kohya_file(name, arch)} for {kohya_readers(arch)}\n```\n")
    if base and model_kind(base) != "hub":
        body += f"\nTrained on `{base}`, which is not on the Hub: load it on the same base model.\n"
    pictures = "".join(f"![{prompt}]({path})\n" for path, prompt in samples)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n{scores_section(name)}\n{pictures}")


def build(name: str, folder: Path, out: Path, images: Path = IMAGES) -> Path:
    """The exact folder `publish` uploads: LoRA files, tokens, validation image, samples, README.md.
    The card first (it reads the LoRA's metadata: a broken file stops here), then the folder, whole or
    not at all."""
    if out.exists():
        raise StyleMixError(f"{out} exists: publish builds a fresh folder; remove it or pick another --dry-run path")
    pngs = sorted((images / name).glob("*.png"))[:SAMPLES]
    model_card = card(name, folder, [(f"samples/{png.name}", Image.open(png).text.get("prompt", name)) for png in pngs])
    with atomic_dir(out) as tmp:
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("README.md"), dirs_exist_ok=True)
        for png in pngs:
            (tmp / "samples").mkdir(exist_ok=True)
            shutil.copy(png, tmp / "samples" / png.name)
        model_card.save(tmp / "README.md")
    return out


def upload(folder: Path, repo: str, private: bool, name: str) -> str:
    """Create the repo (or reuse it) and upload the folder in one commit; returns the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=repo, repo_type="model", commit_message=f"stylemix: publish {name}")
    except OfflineModeIsEnabled:
        raise StyleMixError("HF_HUB_OFFLINE=1: publishing needs the network; `HF_HUB_OFFLINE=0 stylemix publish ...`, "
                            "or --dry-run to see the folder") from None
    except HfHubHTTPError as err:
        raise StyleMixError(f"--repo {repo}: the hub refused ({str(err).splitlines()[0]}); `huggingface-cli login` "
                            f"with a write token") from None
    return str(url)
