"""Model configuration read from an HF ``config.json``: the fields the forward needs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


# The dtype names an engine takes (vLLM's ``--dtype`` choices but ``auto``), each with the torch
# dtype's attribute name: torch-free, so that EngineConfig refuses a misspelt name before
# anything loads, and model.loader maps the same names to torch dtypes.
DTYPE_NAMES = {
    "float32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "float16": "float16",
    "half": "float16",
}


class ModelLoadError(ValueError):
    """A model directory that xyserve cannot serve; the message names what is wrong."""


@dataclass
class ModelConfig:
    architecture: str
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    torch_dtype: str | None = None
    # Sliding-window attention (HF's Mistral, and Qwen2/Qwen3 with use_sliding_window): the
    # window in tokens where some layer has one, else None. It is not implemented: within the
    # window it equals full attention, so the engine caps the context to it.
    sliding_window: int | None = None

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise ModelLoadError(f"missing file: {cfg_path}")
        cfg = read_json(cfg_path)
        try:
            return cls._from_config(path, cfg_path, cfg)
        except KeyError as e:  # a required field is absent: named, with the file
            raise ModelLoadError(f"missing field {e.args[0]!r} in {cfg_path}") from None

    @classmethod
    def _from_config(cls, path: Path, cfg_path: Path, cfg: dict) -> ModelConfig:
        archs = cfg.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ModelLoadError(
                f"unsupported architecture {archs or cfg.get('model_type')!r} in {cfg_path}; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        if cfg.get("hidden_act", "silu") != "silu":
            raise ModelLoadError(f"unsupported hidden_act {cfg['hidden_act']!r} in {cfg_path}")
        family = SUPPORTED_ARCHITECTURES[arch]
        if cfg.get("mlp_bias", False):  # HF's Llama option; the forward's MLP has no biases
            raise ModelLoadError(f"unsupported mlp_bias=true in {cfg_path}")
        rope_params = cfg.get("rope_parameters") or {}
        theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        scaling = cfg.get("rope_scaling") or (rope_params if rope_params else None)
        if scaling is not None:
            rtype = scaling.get("rope_type", scaling.get("type", "default"))
            if rtype not in ("default", "llama3", "linear"):
                raise ModelLoadError(f"unsupported rope_type {rtype!r} in {cfg_path}")
            if rtype == "default":
                scaling = None
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        eos = _read_eos(path, cfg)
        return cls(
            architecture=arch,
            family=family,
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            # HF's default where the key is absent: Qwen3's is 128, the others' hidden / heads
            head_dim=cfg.get("head_dim") or (128 if family == "qwen3" else hidden // heads),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=family == "qwen2" or bool(cfg.get("attention_bias", False)),
            qk_norm=family == "qwen3",
            eos_token_ids=eos,
            bos_token_id=cfg.get("bos_token_id"),
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
            sliding_window=_sliding_window(family, arch, cfg),
        )


def _sliding_window(family: str, arch: str, cfg: dict) -> int | None:
    """The attention window of some layer, as HF reads the config (None: full attention).

    Mistral slides every layer over ``sliding_window`` (HF's default 4096 where the key is
    absent); Qwen2/Qwen3 only with ``use_sliding_window``, on the layers ``layer_types`` marks
    (by default those from ``max_window_layers`` on).
    """
    if arch == "MistralForCausalLM":
        return cfg.get("sliding_window", 4096)
    if family not in ("qwen2", "qwen3") or not cfg.get("use_sliding_window", False):
        return None
    window = cfg.get("sliding_window", 4096)
    layer_types = cfg.get("layer_types")
    if layer_types is not None:
        slides = "sliding_attention" in layer_types
    else:
        slides = cfg.get("max_window_layers", 28) < cfg["num_hidden_layers"]
    return window if slides else None


def read_json(path: Path) -> dict:
    """A JSON object from a model file; ModelLoadError naming the file if it is not one."""
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return data


# The sampling defaults a model's generation_config.json may set, by its names -> ours (vLLM's
# ModelConfig.get_diff_sampling_param: max_new_tokens is max_tokens; do_sample is not read).
GENERATION_SAMPLING_KEYS = {
    "repetition_penalty": "repetition_penalty",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "max_new_tokens": "max_tokens",
}


def sampling_defaults(folder: Path) -> dict:
    """The sampling defaults of ``folder/generation_config.json`` (SamplingParams names, not
    checked here; {} without the file)."""
    gen = folder / "generation_config.json"
    if not gen.is_file():
        return {}
    data = read_json(gen)
    return {ours: data[theirs] for theirs, ours in GENERATION_SAMPLING_KEYS.items()
            if data.get(theirs) is not None}  # fmt: skip


def _read_eos(path: Path, cfg: dict) -> list[int]:
    gen = path / "generation_config.json"
    value = None
    if gen.is_file():
        value = read_json(gen).get("eos_token_id")
    if value is None:
        value = cfg.get("eos_token_id")
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]
