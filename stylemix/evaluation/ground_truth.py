"""Ground truth: for a subject no LoRA trained on, the real picture of it in each look is the answer.

A truth folder holds, per look, one picture per held-out subject with its caption: `<look>/<name>.png`
and `<look>/<name>.txt` (the sample stage writes the demo's, data/truth/). A generated picture whose
prompt (without trigger words) is a truth caption is judged three ways, by the scorer's embeddings:
- style accuracy: is the look whose real pictures (their normalized mean) it is nearest to the
  model's own? Over all looks, each model's shares are a row of the model x look matrix;
- subject accuracy: is the caption it is nearest to, among the held-out captions, its own prompt's?
- nearness to the truth: its cosine to the real picture of its subject in the model's look, against
  the base model's pictures of the same subjects (the base has no look of its own).
A style's look is the truth look of the same name; the base and combinations have none.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from stylemix.errors import StyleMixError
from stylemix.evaluation.scoring import bootstrap, embed_images, embed_texts
from stylemix.images import image_files


@dataclass(frozen=True)
class Truth:
    looks: list[str]
    captions: list[str]  # one per held-out subject, in file order
    files: dict[str, list[Path]]  # look -> its picture of each subject, in the order of captions


def load_truth(folder: Path) -> Truth | None:
    """The truth folder, or None when there is none (no ground truth to judge by)."""
    looks = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not looks:
        return None
    names = [p.stem for p in image_files(folder / looks[0])]
    for look in looks:
        if (found := [p.stem for p in image_files(folder / look)]) != names:
            raise StyleMixError(f"{folder / look}: its pictures ({', '.join(found[:3])} ...) are not the subjects of "
                                f"{folder / looks[0]} ({', '.join(names[:3])} ...); every look needs every subject")
    captions = []
    for name in names:
        caption = folder / looks[0] / f"{name}.txt"
        if not caption.is_file():
            raise StyleMixError(f"{caption} missing: each truth picture needs its caption, the prompt that draws it")
        captions.append(" ".join(caption.read_text().split()))
    return Truth(looks, captions, {look: [folder / look / f"{n}.png" for n in names] for look in looks})


def judge(scores: pd.DataFrame, embeddings: torch.Tensor, truth: Truth, scorer) -> pd.DataFrame:
    """The rows of `scores` (one per generated picture, `embeddings` theirs) whose prompt is a truth
    caption, with what the scorer says of each: `look_pred`, `subject_pred`, and `truth_sim_<look>`,
    its cosine to the real picture of its subject in each look."""
    index = {caption: i for i, caption in enumerate(truth.captions)}
    mask = scores["prompt"].isin(index).to_numpy()
    rows = scores[mask].copy()
    if rows.empty:
        return rows
    emb = embeddings[torch.from_numpy(np.flatnonzero(mask))]
    real = {look: embed_images(scorer, [Image.open(p).convert("RGB") for p in truth.files[look]]) for look in truth.looks}
    centroids = torch.nn.functional.normalize(torch.stack([real[look].mean(0) for look in truth.looks]), dim=-1)
    names = embed_texts(scorer, truth.captions)
    subject = torch.tensor([index[p] for p in rows["prompt"]])
    rows["look_pred"] = [truth.looks[i] for i in (emb @ centroids.T).argmax(-1).tolist()]
    rows["subject_pred"] = [truth.captions[i] for i in (emb @ names.T).argmax(-1).tolist()]
    for look in truth.looks:
        rows[f"truth_sim_{look}"] = (emb * real[look][subject]).sum(-1).tolist()
    return rows


def summarize(judged: pd.DataFrame, truth: Truth) -> dict:
    """The metrics: the model x look matrix of style accuracy, and per model its own look's style
    accuracy, subject accuracy and nearness to the truth (mean and 95% interval), against the base's."""
    matrix, models = {}, {}
    for model, group in judged.groupby("model", sort=False):
        shares = group["look_pred"].value_counts(normalize=True)
        matrix[model] = {look: float(shares.get(look, 0.0)) for look in truth.looks}
        look = model if model in truth.looks else None
        stats = {"pictures": len(group), "look": look,
                 "subject_accuracy": bootstrap((group["subject_pred"] == group["prompt"]).astype(float))}
        if look:
            stats["style_accuracy"] = bootstrap((group["look_pred"] == look).astype(float))
            stats["nearness"] = bootstrap(group[f"truth_sim_{look}"])
        models[model] = stats
    base = judged[judged["model"] == "base"]
    for model, stats in models.items():
        if stats["look"] and not base.empty:
            stats["nearness_base"] = float(base[f"truth_sim_{stats['look']}"].mean())
            stats["nearness_gain"] = stats["nearness"]["mean"] - stats["nearness_base"]
            stats["style_accuracy_base"] = matrix["base"][stats["look"]]
    return {"looks": truth.looks, "subjects": truth.captions, "chance": {"style": 1 / len(truth.looks),
            "subject": 1 / len(truth.captions)}, "style_accuracy": matrix, "models": models}
