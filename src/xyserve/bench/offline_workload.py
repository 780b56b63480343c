"""Offline benchmark workloads: a versioned JSON file of (prompt_len, output_len) requests,
optionally with shared prefixes, turned into token ids with a seeded generator."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

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
    return Path(str(resources.files("xyserve.bench") / kind / name))


def load_workload(path: str | Path, vocab_size: int, seed: int = 0, limit: int | None = None):
    path = Path(path)
    if not path.is_file():
        path = packaged("workloads", str(path))
    data = json.loads(path.read_text())
    if data.get("schema") != WORKLOAD_SCHEMA:
        raise ValueError(f"{path}: schema must be {WORKLOAD_SCHEMA!r}, got {data.get('schema')!r}")
    rng = random.Random(seed)
    plen = int(data.get("shared_prefix_len", 0))
    prefixes: dict = {}
    prompts, outs = [], []
    for i, r in enumerate(data["requests"][:limit]):
        n, o = int(r["prompt_len"]), int(r["output_len"])
        if n < 1 or o < 1:
            raise ValueError(f"{path}: request {i}: prompt_len and output_len must be >= 1")
        g = r.get("prefix_group")
        head: list[int] = []
        if g is not None and plen:
            head = prefixes.setdefault(g, [rng.randrange(3, vocab_size) for _ in range(plen)])
            head = head[: max(0, n - 1)]
        prompts.append(head + [rng.randrange(3, vocab_size) for _ in range(n - len(head))])
        outs.append(o)
    return Workload(data.get("name", path.stem), prompts, outs)
