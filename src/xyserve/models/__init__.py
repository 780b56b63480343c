"""Bundled models: the tiny ``xy-tiny`` target and its ``xy-tiny-draft`` speculative draft.

Both are HF-format directories (Llama architecture, bf16 safetensors, shared byte-level BPE
tokenizer) trained on the Python standard library by ``xyserve.tools.train_tiny``; see each
directory's ``README.md`` for the model card.
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "xy-tiny"
DEFAULT_DRAFT_MODEL = "xy-tiny-draft"
BUNDLED_MODELS: tuple[str, ...] = (DEFAULT_MODEL, DEFAULT_DRAFT_MODEL)

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_DRAFT_MODEL",
    "DEFAULT_MODEL",
    "MODELS_DIR",
    "resolve_model",
]


def resolve_model(name_or_path: str | Path | None) -> Path:
    """Map a model name or path to a local model directory.

    ``None`` -> the bundled default target (``xy-tiny``); ``"xy-tiny"`` / ``"xy-tiny-draft"`` ->
    the bundled directories; anything else is taken as a local directory path. Nothing is ever
    downloaded: a path that does not exist raises ``FileNotFoundError`` naming it.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    if isinstance(name_or_path, str) and name_or_path in BUNDLED_MODELS:
        path = MODELS_DIR / name_or_path
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"bundled model {name_or_path!r} is missing at {path} "
                "(train it with `python -m xyserve.tools.train_tiny`)"
            )
        return path
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model {str(name_or_path)!r}: no such local directory {path.resolve()} "
            f"(bundled models: {', '.join(BUNDLED_MODELS)}; nothing is downloaded)"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"model path {path.resolve()} is not a directory")
    return path.resolve()
