"""Writing a trained model as an HF-format directory, atomically.

The directory is written to a hidden temporary sibling and renamed onto the output path at the
end, so a partially written model never appears there (an interrupted run leaves only the
``.NAME.tmp-PID`` sibling). It holds ``config.json``, bf16 ``model.safetensors``,
``generation_config.json``, the tokenizer files, the model card ``README.md`` and, for a resumed
model, ``training.json`` with every training phase.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .card import render_card
from .tokenizer import TOKENIZER_FILES, write_tokenizer_files


def _fresh_tmp(out_dir: Path) -> Path:
    """An empty temporary sibling of ``out_dir`` (its parent created if needed)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _save_bf16(model, tmp: Path, eos_id: int) -> None:
    """Save ``model`` in bfloat16 with a greedy generation config; it is left in float32."""
    import torch
    from transformers import GenerationConfig

    model = model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.generation_config = GenerationConfig(
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        do_sample=False,
        max_new_tokens=128,
    )
    model.save_pretrained(tmp, safe_serialization=True)
    model.float()


def save_model_dir(
    model,
    tok,
    out_dir: Path,
    info: dict,
    max_pos: int,
    eos_id: int,
    tokenizer_from: Path | None = None,
) -> None:
    """Write an HF-format directory atomically (temp sibling, then rename).

    With ``tokenizer_from`` the tokenizer files are copied byte for byte from that directory.
    ``info["phases"]`` (if any) is also written to ``training.json``.
    """
    out_dir = Path(out_dir)
    tmp = _fresh_tmp(out_dir)
    _save_bf16(model, tmp, eos_id)
    if info.get("phases"):
        (tmp / "training.json").write_text(json.dumps({"phases": info["phases"]}, indent=2) + "\n")
    if tokenizer_from is not None:
        for f in TOKENIZER_FILES:
            shutil.copyfile(Path(tokenizer_from) / f, tmp / f)
    else:
        write_tokenizer_files(tok, tmp, max_pos)
    (tmp / "README.md").write_text(render_card(out_dir.name, info))
    for f in tmp.iterdir():
        f.chmod(0o644)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
