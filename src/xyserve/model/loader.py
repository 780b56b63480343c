"""Load an HF-format checkpoint directory: config.json plus model.safetensors or shards."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from xyserve.model.config import DTYPE_NAMES, ModelConfig, ModelLoadError, read_json
from xyserve.model.llama import LlamaModel

DTYPES = {name: getattr(torch, attr) for name, attr in DTYPE_NAMES.items()}


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA where there is one), ``cpu``, ``cuda`` or ``cuda:N``; CUDA asked for on
    a machine without it is a ValueError naming the argument, not torch's assertion."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index} has no weight_map")
        shards = sorted(set(weight_map.values()))
        weights: dict[str, torch.Tensor] = {}
        for shard in shards:
            f = path / shard
            if not f.is_file():
                raise ModelLoadError(f"missing file: {f} (named in {index.name})")
            weights.update(load_file(str(f)))
        return weights
    raise ModelLoadError(f"missing file: {single} (or {index.name} with shards)")


def load_model(path: str | Path, device: torch.device, dtype: torch.dtype) -> LlamaModel:
    path = Path(path)
    cfg = ModelConfig.from_dir(path)
    weights = load_weights(path)
    try:
        return LlamaModel(cfg, weights, device, dtype)
    except KeyError as e:
        raise ModelLoadError(f"missing weight {e.args[0]!r} in {path}") from None
