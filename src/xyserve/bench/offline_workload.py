"""``bench offline``'s inputs: the workload (a versioned data file), the random-weight model,
and what the workload costs in model FLOPs (the numerator that every system's GFLOP/s share)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from xyserve.bench.data_file import read_versioned

WORKLOAD_SCHEMA = "xyserve.offline-workload/1"


@dataclass
class Workload:
    name: str
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)


def packaged(kind: str, name: str) -> Path:
    """A data file shipped in ``xyserve/bench/<kind>/`` (workloads, models)."""
    return Path(str(resources.files("xyserve.bench") / kind / name))


def find(kind: str, name: str | Path) -> Path:
    """``name`` as a file, else the packaged data file of that name; FileNotFoundError
    naming it where neither exists (the commands turn it into a usage error)."""
    path = Path(name)
    if path.is_file():
        return path
    path = packaged(kind, str(name))
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {str(name)!r}: no such file, nor a packaged one")
    return path


def _count(value: object, what: str, least: int) -> int:
    """``value`` as a whole number of at least ``least``, else a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if int(value) < least:
        raise ValueError(f"{what} must be at least {least}, got {value!r}")
    return int(value)


def read_workload(
    path: str | Path, limit: int | None = None
) -> tuple[str, int, list[tuple[int, int, object]]]:
    """The workload file checked: its name, shared prefix length and (prompt_len,
    output_len, prefix_group) per request, the first ``limit`` of them. A ValueError names
    the file and what is wrong with it (not JSON, no requests, a length that is no whole
    number of at least 1), so that the command refuses it before building a model."""
    path = find("workloads", path)
    data = read_versioned(path, WORKLOAD_SCHEMA)
    if limit is not None and limit < 1:
        raise ValueError(f"the number of requests must be at least 1, got {limit}")
    reqs = data.get("requests")
    if not isinstance(reqs, list) or not reqs:
        raise ValueError(f"{path}: 'requests' must be a non-empty list")
    out = []
    try:
        plen = _count(data.get("shared_prefix_len", 0), "shared_prefix_len", 0)
        for i, r in enumerate(reqs[:limit]):
            if not isinstance(r, dict):
                raise ValueError(f"request {i} must be an object, got {r!r}")
            n = _count(r.get("prompt_len"), f"request {i}: prompt_len", 1)
            o = _count(r.get("output_len"), f"request {i}: output_len", 1)
            out.append((n, o, r.get("prefix_group")))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return str(data.get("name", path.stem)), plen, out


def load_workload(path: str | Path, vocab_size: int, seed: int = 0, limit: int | None = None):
    """The workload file (a path or a packaged name) with seeded random prompt token ids."""
    name, plen, reqs = read_workload(path, limit)
    rng = random.Random(seed)
    prefixes: dict = {}
    prompts, outs = [], []
    for n, o, g in reqs:
        head: list[int] = []
        if g is not None and plen:
            head = prefixes.setdefault(g, [rng.randrange(3, vocab_size) for _ in range(plen)])
            head = head[: max(0, n - 1)]
        prompts.append(head + [rng.randrange(3, vocab_size) for _ in range(n - len(head))])
        outs.append(o)
    return Workload(name, prompts, outs)


def build_random_model(config_file: Path, out: Path, seed: int) -> Path:
    """A Llama with seeded random weights from an HF config JSON, saved to ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads(config_file.read_text())
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    model.save_pretrained(str(out))
    return out


def linear_flops(cfg: dict, work: Workload) -> float:
    """FLOPs of the linear layers: every prompt and output token once, lm_head per output."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    d = cfg.get("head_dim") or h // heads
    kvh = cfg.get("num_key_value_heads") or heads
    per_tok = 2 * layers * (h * (heads + 2 * kvh) * d + heads * d * h + 3 * h * inter)
    total = 0.0
    for p, o in zip(work.prompts, work.output_lens):
        total += per_tok * (len(p) + o) + 2 * h * cfg["vocab_size"] * o
    return total


def model_flops(cfg: dict, work: Workload) -> float:
    """Linear layers plus attention (QK^T and PV, causal)."""
    heads, layers = cfg["num_attention_heads"], cfg["num_hidden_layers"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // heads
    total = linear_flops(cfg, work)
    for p, o in zip(work.prompts, work.output_lens):
        n = len(p) + o
        total += layers * 4 * heads * d * (n * (n + 1) / 2)
    return total
