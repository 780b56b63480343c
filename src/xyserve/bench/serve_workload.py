"""Serving workloads as versioned data files (``xyserve.serve-workload/1``) and their sampler.

A workload file gives length distributions, never text: histograms of ``[lo, hi, weight]``
rows (lengths in tokens, uniform within a row, ``lo <= hi``). Optional parts:

- ``shared_prefix``: ``{"num_prefixes": k, "len": histogram}``; every request starts with one
  of ``k`` shared prefixes (a system prompt), then its own ``prompt_len`` tokens;
- ``multi_turn``: ``{"turns": [lo, hi]}``; a session's turn ``t`` re-sends the whole history
  (earlier prompts, then stand-in ids for earlier answers) before its new message, so the
  history is a prefix-cache hit as far as the server kept it;
- ``arrival``: ``{"burstiness": b}``, the gamma shape the workload suggests (1 = Poisson).

Sampling is seeded: the same file, seed and count give the same prompts and lengths.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from xyserve.bench.data_file import check_versioned, read_json

SCHEMA = "xyserve.serve-workload/1"
FIRST_TOKEN_ID = 3  # ids below are often special (pad/bos/eos) in small vocabularies


class WorkloadError(ValueError):
    """A workload file that does not validate; the message names the file and the field."""


@dataclass(frozen=True)
class Histogram:
    rows: tuple[tuple[int, int, float], ...]

    @property
    def mean(self) -> float:
        total = sum(w for _, _, w in self.rows)
        return sum((lo + hi) / 2 * w for lo, hi, w in self.rows) / total

    @property
    def max(self) -> int:
        return max(hi for _, hi, _ in self.rows)

    def sample(self, rng: random.Random) -> int:
        lo, hi, _ = rng.choices(self.rows, weights=[w for _, _, w in self.rows])[0]
        return rng.randint(lo, hi)


@dataclass(frozen=True)
class ServeWorkload:
    name: str
    description: str
    prompt_len: Histogram
    output_len: Histogram
    num_prefixes: int = 0
    prefix_len: Histogram | None = None
    turns: tuple[int, int] = (1, 1)
    burstiness: float = 1.0
    source: str = ""


@dataclass
class BenchRequest:
    """One request to send: token-id prompt and the exact number of tokens to generate."""

    prompt_ids: list[int]
    output_len: int
    session: int = 0
    turn: int = 0
    prefix_group: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def packaged_path(name: str) -> Path:
    return Path(str(resources.files("xyserve.bench") / "workloads" / name))


def resolve(path: str | Path) -> Path:
    """A file path, or the name of a packaged workload (with or without ``.json``)."""
    p = Path(path)
    if p.is_file():
        return p
    for cand in (str(path), f"{path}.json", f"serve_{path}.json"):
        q = packaged_path(cand)
        if q.is_file():
            return q
    raise WorkloadError(f"workload {str(path)!r}: no such file, nor a packaged workload")


def _histogram(where: str, raw: Any) -> Histogram:
    if not isinstance(raw, list) or not raw:
        raise WorkloadError(f"{where}: must be a non-empty list of [lo, hi, weight] rows")
    rows = []
    for i, row in enumerate(raw):
        ok = isinstance(row, list) and len(row) == 3
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in row[:2])
        ok = ok and isinstance(row[2], int | float) and not isinstance(row[2], bool)
        if not ok:
            raise WorkloadError(f"{where}[{i}]: must be [lo, hi, weight] with integer lo, hi")
        lo, hi, w = row
        if lo < 1 or hi < lo:
            raise WorkloadError(f"{where}[{i}]: needs 1 <= lo <= hi, got lo={lo}, hi={hi}")
        if not (w > 0 and math.isfinite(w)):
            raise WorkloadError(f"{where}[{i}]: weight must be a positive number, got {w}")
        rows.append((lo, hi, float(w)))
    return Histogram(tuple(rows))


def parse(data: Any, where: str = "workload") -> ServeWorkload:
    """Validate a decoded workload file; every problem raises WorkloadError naming the field."""
    check_versioned(data, where, SCHEMA, WorkloadError)
    known = {"schema", "name", "description", "source", "prompt_len", "output_len"}
    known |= {"shared_prefix", "multi_turn", "arrival"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise WorkloadError(f"{where}: unknown fields {unknown}")
    for key in ("name", "description"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise WorkloadError(f"{where}: {key!r} must be a non-empty string")
    for part, fields in (
        ("shared_prefix", {"num_prefixes", "len"}),
        ("multi_turn", {"turns"}),
        ("arrival", {"burstiness"}),
    ):
        # a misspelled key inside a part (arrival.burstyness) was dropped without a word
        extra = sorted(set(data[part]) - fields) if isinstance(data.get(part), dict) else []
        if extra:
            raise WorkloadError(f"{where}: unknown fields in {part}: {extra}")
    num_prefixes, prefix_len = 0, None
    sp = data.get("shared_prefix")
    if sp is not None:
        n = sp.get("num_prefixes") if isinstance(sp, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise WorkloadError(f"{where}: shared_prefix.num_prefixes must be an integer >= 1")
        num_prefixes, prefix_len = n, _histogram(f"{where}: shared_prefix.len", sp.get("len"))
    turns = (1, 1)
    mt = data.get("multi_turn")
    if mt is not None:
        t = mt.get("turns") if isinstance(mt, dict) else None
        ints = isinstance(t, list) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in t
        )
        ok = ints and len(t) == 2
        if not ok or not 1 <= t[0] <= t[1]:
            raise WorkloadError(f"{where}: multi_turn.turns must be [lo, hi] with 1 <= lo <= hi")
        turns = (t[0], t[1])
    burst = 1.0
    arr = data.get("arrival")
    if arr is not None:
        b = arr.get("burstiness") if isinstance(arr, dict) else None
        if not isinstance(b, int | float) or isinstance(b, bool) or not 0 < b < math.inf:
            raise WorkloadError(f"{where}: arrival.burstiness must be a positive number")
        burst = float(b)
    return ServeWorkload(
        name=data["name"],
        description=data["description"],
        prompt_len=_histogram(f"{where}: prompt_len", data.get("prompt_len")),
        output_len=_histogram(f"{where}: output_len", data.get("output_len")),
        num_prefixes=num_prefixes,
        prefix_len=prefix_len,
        turns=turns,
        burstiness=burst,
        source=str(data.get("source", "")),
    )


def load(path: str | Path) -> ServeWorkload:
    p = resolve(path)
    return parse(read_json(p, WorkloadError), str(p))


def sample(
    work: ServeWorkload, num: int, vocab_size: int, seed: int = 0, max_model_len: int | None = None
) -> list[BenchRequest]:
    """``num`` requests drawn from the workload, deterministic in ``seed``.

    Prompts longer than ``max_model_len - output_len`` lose the end of their own part (the
    shared prefix and history stay), so that every request is servable; ``extra["clipped"]``
    marks them.
    """
    if num < 1:
        raise ValueError("the number of requests must be at least 1")
    if vocab_size <= FIRST_TOKEN_ID + 1:
        raise ValueError(f"vocab_size must exceed {FIRST_TOKEN_ID + 1}, got {vocab_size}")
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(FIRST_TOKEN_ID, vocab_size) for _ in range(n)]

    prefixes = [ids(work.prefix_len.sample(rng)) for _ in range(work.num_prefixes)]
    # Sessions: each a list of turns; turns of one session keep their order in the output.
    sessions: list[list[BenchRequest]] = []
    total = 0
    while total < num:
        s = len(sessions)
        group = rng.randrange(work.num_prefixes) if prefixes else None
        history = list(prefixes[group]) if group is not None else []
        turns = []
        for t in range(rng.randint(*work.turns)):
            if total >= num:
                break
            out = work.output_len.sample(rng)
            own = ids(work.prompt_len.sample(rng))
            prompt = history + own
            clipped = False
            if max_model_len is not None:
                room = max_model_len - out
                if room < 1:
                    raise WorkloadError(
                        f"{work.name}: an output of {out} tokens leaves no room for a prompt "
                        f"within max_model_len={max_model_len}"
                    )
                if len(prompt) > room:
                    prompt, clipped = prompt[: max(room, 1)], True
            req = BenchRequest(prompt, out, session=s, turn=t, prefix_group=group)
            req.extra["clipped"] = clipped
            turns.append(req)
            total += 1
            # The next turn re-sends this prompt and a stand-in for the answer (its ids are
            # not known in advance), then a new message.
            history = prompt + ids(out)
        sessions.append(turns)
    # Interleave sessions: each step picks a random session with turns left (order kept).
    out_list: list[BenchRequest] = []
    live = [list(reversed(s)) for s in sessions if s]
    while live:
        k = rng.randrange(len(live))
        out_list.append(live[k].pop())
        if not live[k]:
            live.pop(k)
    return out_list
