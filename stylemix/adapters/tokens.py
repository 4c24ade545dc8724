"""New concept tokens trained with a style's LoRA (pivotal tuning), e.g. the storyboard
reference's shot types `<cu_trg>` close-up, `<ms_trg>` medium shot, `<fs_trg>` full shot.

Each token is added to every tokenizer of the pipeline and gets one embedding row per text
encoder, started at the mean embedding of its initializer phrase. Only those rows train: the
embedding table becomes the frozen original table plus a small parameter of new rows, so every
existing token's embedding stays the very same tensor.

Saved beside the LoRA, one file per token and format:
- tokens/<name>.safetensors: diffusers' textual-inversion format ({token: vector}), loaded by
  `pipe.load_textual_inversion(file)`; SDXL's second text encoder's in tokens/<name>_2.safetensors;
- embeddings/<name>.safetensors: the A1111 / ComfyUI embedding ({"emb_params"} for SD 1.5,
  {"clip_l", "clip_g"} for SDXL), written in a prompt as its file name.
"""
import shutil
from pathlib import Path

import torch
from torch import nn

from stylemix.data.conditioning import text_encoders, tokenizers
from stylemix.errors import StyleMixError
from stylemix.outputs import save_safetensors

DIFFUSERS, A1111 = "tokens", "embeddings"  # the two folders in a LoRA folder


def file_name(token: str) -> str:
    """`<cu_trg>` -> `cu_trg` (params only allow `<lowercase_name>`)."""
    return token.strip("<>")


def diffusers_file(token: str, encoder: int = 0) -> str:
    """A token's diffusers file in a LoRA folder, for the first (0) or SDXL's second (1) text encoder."""
    return f"{DIFFUSERS}/{file_name(token)}{'_2' if encoder else ''}.safetensors"


def a1111_file(token: str) -> str:
    """A token's A1111 / ComfyUI embedding in a LoRA folder."""
    return f"{A1111}/{file_name(token)}.safetensors"


class GrownEmbedding(nn.Module):
    """A token embedding table: the original (frozen) rows, then trainable new ones."""

    def __init__(self, old: nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.old = old
        self.new = nn.Parameter(new_rows.detach().clone().float())

    @property
    def weight(self) -> torch.Tensor:  # what get_input_embeddings().weight readers expect
        return torch.cat([self.old.weight, self.new.to(self.old.weight.dtype)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = self.old.num_embeddings
        known = self.old(ids.clamp(max=n - 1))
        new = self.new.to(known.dtype)[(ids - n).clamp(min=0)]
        return torch.where((ids >= n)[..., None], new, known)


def add_tokens(pipe, tokens: dict[str, str], style: str) -> None:
    """Add `tokens` ({token: initializer phrase}) to the pipeline's tokenizer(s) and text
    encoder(s), whose embedding tables become GrownEmbeddings (their `.new` rows train)."""
    for tokenizer, encoder in zip(tokenizers(pipe), text_encoders(pipe)):
        taken = [t for t in tokens if t in tokenizer.get_vocab()]
        if taken:
            raise StyleMixError(f"styles.{style}.tokens: {', '.join(taken)} already in the base model's vocabulary; "
                                f"pick names it does not know")
        table = encoder.get_input_embeddings()
        rows = []
        for phrase in tokens.values():
            ids = tokenizer(phrase, add_special_tokens=False).input_ids
            rows.append(table.weight[torch.tensor(ids, device=table.weight.device)].float().mean(0))
        tokenizer.add_tokens(list(tokens))
        encoder.set_input_embeddings(GrownEmbedding(table, torch.stack(rows)))


def save_tokens(folder: Path, pipe, tokens: list[str]) -> None:
    """Write the trained rows of `tokens` in both formats into `folder`."""
    rows = [encoder.get_input_embeddings().new.detach().float().cpu() for encoder in text_encoders(pipe)]
    (folder / DIFFUSERS).mkdir()
    (folder / A1111).mkdir()
    for i, token in enumerate(tokens):
        for encoder, encoder_rows in enumerate(rows):
            save_safetensors({token: encoder_rows[i].contiguous()}, folder / diffusers_file(token, encoder))
        a1111 = {"emb_params": rows[0][i : i + 1]} if len(rows) == 1 else {"clip_l": rows[0][i : i + 1], "clip_g": rows[1][i : i + 1]}
        save_safetensors({k: v.contiguous() for k, v in a1111.items()}, folder / a1111_file(token))


def token_files(folder: Path, token: str) -> list[Path]:
    """The files of one token in a LoRA folder: both formats (and SDXL's second text encoder's)."""
    candidates = (diffusers_file(token), diffusers_file(token, 1), a1111_file(token))
    return [folder / path for path in candidates if (folder / path).is_file()]


def copy_token(source: Path, dest: Path, token: str) -> None:
    for path in token_files(source, token):
        (dest / path.parent.name).mkdir(exist_ok=True)
        shutil.copy2(path, dest / path.parent.name / path.name)


def load_tokens(pipe, folder: Path, tokens: list[str]) -> None:
    """Load a LoRA folder's tokens into the pipeline through diffusers' textual-inversion loader."""
    for token in tokens:
        for i, (tokenizer, encoder) in enumerate(zip(tokenizers(pipe), text_encoders(pipe))):
            path = folder / diffusers_file(token, i)
            if not path.is_file():
                raise StyleMixError(f"{folder} declares token {token} but {path} is missing; retrain or re-merge it")
            if token in tokenizer.get_vocab():
                raise StyleMixError(f"{folder}: token {token} is already loaded (from another LoRA); use one of the two")
            pipe.load_textual_inversion(str(path), tokenizer=tokenizer, text_encoder=encoder)


def unload_tokens(pipe, tokens: list[str]) -> None:
    if not tokens:  # diffusers unloads every added token when given none
        return
    for tokenizer, encoder in zip(tokenizers(pipe), text_encoders(pipe)):
        pipe.unload_textual_inversion(tokens, tokenizer=tokenizer, text_encoder=encoder)
