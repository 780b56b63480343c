"""Attention test/bench cases: a token table over a shuffled paged cache, with random q/K/V.

Shared by the kernel tests and ``xyserve bench kernels`` so both exercise the same layouts:
blocks are dealt in random order (paging is never accidentally contiguous) and the cache holds
random values in unused slots, so a kernel that reads past a stage's keys is caught. The
benchmark's steps are drawn by ``sample_batch`` from the length distributions of a step
workload (``bench/workloads/{conversation,coding}.json``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from xyserve.bench.data_file import read_versioned
from xyserve.plan.attention_metadata import AttentionMetadata
from xyserve.plan.token_table import TokenTable

WORKLOADS = ("conversation", "coding")  # the bundled step workloads
STEP_SCHEMA = "xyserve.kernel_workload/1"


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``num_tokens`` new tokens after ``context_len`` history keys."""

    num_tokens: int
    context_len: int
    prefill: bool = False
    num_spec_tokens: int = 0
    tree: bool = False  # verify with a random token tree instead of a chain


@dataclass
class AttentionCase:
    meta: AttentionMetadata
    q: torch.Tensor  # [T, Hq, D]
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor
    scale: float


def random_tree_mask(n: int, rng: random.Random) -> tuple[tuple[bool, ...], ...]:
    """Ancestor-or-self mask of a random tree over n new tokens (token 0 is the root)."""
    parent = [-1] + [rng.randrange(i) for i in range(1, n)]
    rows = []
    for i in range(n):
        row = [False] * n
        j = i
        while j >= 0:
            row[j] = True
            j = parent[j]
        rows.append(tuple(row))
    return tuple(rows)


def build_case(
    specs: list[StageSpec],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    spare_blocks: int = 2,
) -> AttentionCase:
    rng = random.Random(seed)
    need = [(s.context_len + s.num_tokens + block_size - 1) // block_size for s in specs]
    num_blocks = sum(need) + spare_blocks
    perm = list(range(num_blocks))
    rng.shuffle(perm)
    table = TokenTable(block_size=block_size)
    pos = 0
    for i, s in enumerate(specs):
        blocks = perm[pos : pos + need[i]]
        pos += need[i]
        tree = random_tree_mask(s.num_tokens, rng) if s.tree and s.num_tokens else None
        spec = s.num_spec_tokens or (max(0, s.num_tokens - 1) if s.tree else 0)
        table.add(
            f"r{i}",
            s.num_tokens,
            s.context_len + s.num_tokens,
            blocks,
            num_spec_tokens=spec,
            is_prefill=s.prefill,
            tree_mask=tree,
        )
    gen = torch.Generator().manual_seed(seed)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k = torch.randn(shape, generator=gen).to(dtype).to(device)
    v = torch.randn(shape, generator=gen).to(dtype).to(device)
    q = torch.randn((table.num_tokens, num_q_heads, head_dim), generator=gen).to(dtype).to(device)
    meta = AttentionMetadata.build(table, device=device)
    return AttentionCase(meta, q, k, v, 1.0 / head_dim**0.5)


def load_workload(name: str) -> dict:
    """A step workload (schema ``xyserve.kernel_workload/1``) by bundled name, or a path to
    a JSON file of that schema. It is checked here, where the file is known: a file of
    another schema (a serve workload) or a malformed field used to be accepted and fail
    later in ``sample_batch`` with a bare KeyError, after other bench sections had run."""
    p = Path(name)
    if not (p.suffix == ".json" and p.is_file()):
        p = Path(str(resources.files("xyserve.bench").joinpath(f"workloads/{name}.json")))
        if not p.is_file():
            raise FileNotFoundError(f"workload {name!r}: no such .json file, nor a packaged one")
    data = read_versioned(p, STEP_SCHEMA)
    _check_fields(data, str(p))
    return data


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_fields(wl: dict, where: str) -> None:
    """The fields ``sample_batch`` reads, each of the shape it assumes; a ValueError names
    the file and the field."""

    def bad(key: str, what: str) -> ValueError:
        return ValueError(f"{where}: field {key!r} must be {what}, got {wl.get(key)!r}")

    for key in ("prompt_len", "output_len", "prefix_hit"):
        rows = wl.get(key)
        if not (isinstance(rows, list) and rows):
            raise bad(key, "a non-empty list of [lo, hi, weight] rows")
        for row in rows:
            if not (isinstance(row, list) and len(row) == 3 and all(map(_is_number, row))):
                raise bad(key, "a non-empty list of [lo, hi, weight] rows")
            if not (0 <= row[0] <= row[1] and row[2] > 0):
                raise bad(key, "rows with 0 <= lo <= hi and weight > 0")
    for key in ("running", "spec_len"):
        pair = wl.get(key)
        ints = isinstance(pair, list) and len(pair) == 2
        if not (ints and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)):
            raise bad(key, "[lo, hi], two whole numbers")
        if not 0 <= pair[0] <= pair[1]:
            raise bad(key, "[lo, hi] with 0 <= lo <= hi")
    for key in ("verify_fraction", "tree_fraction"):
        if not (_is_number(wl.get(key)) and 0 <= wl[key] <= 1):
            raise bad(key, "a number from 0 to 1")
    n = wl.get("max_prefills")
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        raise bad("max_prefills", "a whole number of at least 0")


def _hist(h: list[list[float]], rng: random.Random) -> float:
    lo, hi, _ = rng.choices(h, weights=[b[2] for b in h])[0]
    return rng.uniform(lo, hi)


def sample_batch(wl: dict, budget: int, rng: random.Random) -> list[StageSpec]:
    """One step's stages: running decodes/verifies first, then prefill chunks fill the budget."""
    specs: list[StageSpec] = []
    used = 0
    for _ in range(rng.randint(*wl["running"])):
        ctx = int(_hist(wl["prompt_len"], rng)) + rng.randint(1, int(_hist(wl["output_len"], rng)))
        if rng.random() < wl["verify_fraction"]:
            k = rng.randint(*wl["spec_len"])
            st = StageSpec(k + 1, ctx, num_spec_tokens=k, tree=rng.random() < wl["tree_fraction"])
        else:
            st = StageSpec(1, ctx)
        if used + st.num_tokens > budget:
            break
        specs.append(st)
        used += st.num_tokens
    for _ in range(wl["max_prefills"]):
        if used >= budget:
            break
        p = int(_hist(wl["prompt_len"], rng))
        done = int(p * _hist(wl["prefix_hit"], rng))  # token-wise prefix-cache hit
        if rng.random() < 0.5 and p - done > 64:  # a later chunk of a chunked prefill
            done += rng.randint(1, (p - done) // 2)
        n = min(max(1, p - done), budget - used)
        specs.append(StageSpec(n, done, prefill=True))
        used += n
    rng.shuffle(specs)
    return specs


def case_summary(meta: AttentionMetadata) -> dict:
    """The report columns that describe one step: its stages by kind, tokens and keys."""
    kinds = [r.kind.value for r in meta.table.rows]
    return {
        "stages": len(kinds),
        "prefill": kinds.count("prefill"),
        "decode": kinds.count("decode"),
        "verify": kinds.count("verify"),
        "tokens": meta.num_tokens,
        "kv_tokens": sum(r.kv_len for r in meta.table.rows),
    }
