"""The GEMM table: virtual-padding buckets of M and the tuned tile configuration per (op, M).

M (the step's token count) is padded *virtually* to a bucket: the kernel computes whole tiles
but reads and writes only the real rows (paper §6.1). Buckets are multiples of 16 up to 64, of
32 up to 256 and of 64 beyond, capped by the token budget, so a model has a small finite set of
(op, padded M) shapes, each profiled offline by ``xyserve tune`` (paper §6.3). At run time a
lookup names the configuration; an untuned shape gets a sound default and one warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

TABLE_VERSION = 1
TABLE_FILE = "xyserve_gemm_table.json"
OPS: tuple[str, ...] = ("qkv", "o_proj", "gate_up", "down", "lm_head")


def _step(m: int) -> int:
    return 16 if m <= 64 else 32 if m <= 256 else 64


def padded_m(m: int) -> int:
    """The bucket of M: 16-steps to 64, 32-steps to 256, then 64-steps."""
    if m <= 0:
        return 0
    step = _step(m)
    return -(-m // step) * step


def bucket_low(pm: int) -> int:
    """The smallest M that pads to the bucket ``pm``."""
    return pm - _step(pm) + 1


def buckets(budget: int) -> list[int]:
    """Every padded M reachable with at most ``budget`` tokens."""
    out: list[int] = []
    for m in range(1, budget + 1):
        b = padded_m(m)
        if not out or out[-1] != b:
            out.append(b)
    return out


@dataclass(frozen=True)
class GemmConfig:
    """One tile configuration: Triton tile shape and launch knobs, and the CPU implementation."""

    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    group_m: int = 8  # swizzle: M-tiles that share N-tiles, for L2 reuse
    num_warps: int = 4
    num_stages: int = 3
    cpu_impl: str = "linear"  # one of smooth_gemm.CPU_IMPLS (see smooth_gemm.cpu_linear)
    split_k: int = 1  # CUDA: K ranges summed atomically (small M: more programs per tile)
    gpu_impl: str = "triton"  # CUDA: "triton" (SmoothGEMM) or "cublas" (the vendor GEMM)

    def key(self) -> str:
        if self.gpu_impl == "cublas":
            return f"cublas-{self.cpu_impl}"
        split = f"sk{self.split_k}" if self.split_k > 1 else ""
        return (
            f"m{self.block_m}n{self.block_n}k{self.block_k}g{self.group_m}"
            f"w{self.num_warps}s{self.num_stages}{split}-{self.cpu_impl}"
        )


def default_config(pm: int) -> GemmConfig:
    """A sound untuned choice: the M tile no larger than the bucket."""
    bm = 16 if pm <= 16 else 32 if pm <= 32 else 64
    return GemmConfig(block_m=bm, block_n=64, block_k=32, group_m=8, num_warps=4, num_stages=3)


@dataclass
class GemmTable:
    model: str = ""
    device: str = "cpu"
    budget: int = 0
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # op -> (N, K)
    entries: dict[str, dict[int, GemmConfig]] = field(default_factory=dict)  # op -> pm -> cfg
    version: int = TABLE_VERSION
    _warned: set[tuple[str, int, int, int]] = field(default_factory=set, repr=False)

    def set(self, op: str, pm: int, cfg: GemmConfig) -> None:
        self.entries.setdefault(op, {})[pm] = cfg

    def lookup(self, op: str, m: int, n: int | None = None, k: int | None = None) -> GemmConfig:
        """Tuned config of (op, padded M); a sound default, with one warning, when untuned."""
        pm = padded_m(m)
        cfg = self.entries.get(op, {}).get(pm)
        shape_ok = n is None or self.shapes.get(op) in (None, (n, k))
        if cfg is not None and shape_ok:
            return cfg
        # With no table at all, say so once rather than once per shape.
        key = (op, pm, n or 0, k or 0) if self.entries else ("*", 0, 0, 0)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(
                f"SmoothGEMM: no tuned config for op={op} M={m} (bucket {pm}) N={n} K={k}"
                f"{'' if self.entries else ' (no GEMM table loaded; not repeated)'}; "
                f"using the default (run `xyserve tune --model PATH`)",
                stacklevel=2,
            )
        return default_config(pm)

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "model": self.model,
            "device": self.device,
            "budget": self.budget,
            "shapes": {op: list(s) for op, s in self.shapes.items()},
            "entries": {
                op: {str(pm): asdict(c) for pm, c in sorted(per.items())}
                for op, per in self.entries.items()
            },
        }

    def save(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_json(), indent=1))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> GemmTable:
        data = json.loads(Path(path).read_text())
        if data.get("version") != TABLE_VERSION:
            raise ValueError(f"{path}: GEMM table version {data.get('version')} != {TABLE_VERSION}")
        t = cls(
            model=data.get("model", ""),
            device=data.get("device", "cpu"),
            budget=int(data.get("budget", 0)),
            shapes={op: (int(s[0]), int(s[1])) for op, s in data.get("shapes", {}).items()},
        )
        for op, per in data.get("entries", {}).items():
            for pm, c in per.items():
                t.set(op, int(pm), GemmConfig(**c))
        return t


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xyserve" / "gemm_tables"


def cache_path(model_path: str | os.PathLike, device: str) -> Path:
    """Cache-folder location of a model's table (used when the model folder is read-only)."""
    p = Path(model_path).resolve()
    digest = hashlib.sha1(str(p).encode()).hexdigest()[:10]
    return cache_dir() / f"{p.name}-{device}-{digest}.json"


def find_table(model_path: str | os.PathLike, device: str = "cpu") -> GemmTable | None:
    """The table next to the model, else the cache folder's; None when never tuned."""
    for p in (Path(model_path) / TABLE_FILE, cache_path(model_path, device)):
        if p.is_file():
            t = GemmTable.load(p)
            if t.device == device or p.parent == Path(model_path):
                return t
    return None


def model_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(N, K) of each linear op of a Llama/Qwen2-family model, from its config.json."""
    h = int(config["hidden_size"])
    hq = int(config["num_attention_heads"])
    hkv = int(config.get("num_key_value_heads") or hq)
    d = int(config.get("head_dim") or h // hq)
    inter = int(config["intermediate_size"])
    shapes = {
        "qkv": ((hq + 2 * hkv) * d, h),
        "o_proj": (h, hq * d),
        "gate_up": (2 * inter, h),
        "down": (h, inter),
    }
    if config.get("vocab_size"):
        shapes["lm_head"] = (int(config["vocab_size"]), h)
    return shapes
