"""The GEMM table: virtual-padding buckets of M and the tuned tile configuration per (op, M).

M (the step's token count) is padded *virtually* to a bucket: the kernel computes whole tiles
but reads and writes only the real rows (paper §6.1). Buckets are M = 1 alone (the single-row
GEMV of batch-1 decoding), then multiples of 16 up to 64, of 32 up to 256 and of 64 beyond,
capped by the token budget, so a model has a small finite set of
(op, padded M) shapes, each profiled offline by ``xyserve tune`` (paper §6.3). At run time a
lookup names the configuration; an untuned shape gets a sound default (at most one warning per
table, never one per shape).

A table is a measurement of one machine at one precision: it records that machine's signature
(``machine.py``), the dtype it was tuned in and, for float32, whether the Triton dots ran in TF32,
and ``find_table`` applies it only to an equal (machine, precision). A table from elsewhere (or
one that recorded none, as version 1 did, or a truncated, corrupt or other-version file) is
reported once and skipped; the caller then tunes the decode buckets
quickly (``SmoothGemm``) or runs on defaults. Tables tuned at first start live in the user's
cache folder keyed by the model's GEMM shapes and the machine, like Triton's autotune cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from xyserve.plan.machine import MachineSignature, machine_signature

TABLE_VERSION = 3  # 2: records the machine signature; 3: and the precision (dtype, allow_tf32)
TABLE_FILE = "xyserve_gemm_table.json"
OPS: tuple[str, ...] = ("qkv", "o_proj", "gate_up", "down", "lm_head")


def _step(m: int) -> int:
    return 16 if m <= 64 else 32 if m <= 256 else 64


def padded_m(m: int) -> int:
    """The bucket of M: 1 alone (a single row is a matrix-vector product, which the vendor
    libraries run on another code path than any M > 1), then 16-steps to 64, 32-steps to 256,
    then 64-steps."""
    if m <= 1:
        return max(m, 0)
    step = _step(m)
    return -(-m // step) * step


def bucket_low(pm: int) -> int:
    """The smallest M that pads to the bucket ``pm``."""
    return 2 if pm == 16 else pm - _step(pm) + 1 if pm > 1 else pm


def buckets(budget: int) -> list[int]:
    """Every padded M reachable with at most ``budget`` tokens."""
    out: list[int] = []
    for m in range(1, budget + 1):
        b = padded_m(m)
        if not out or out[-1] != b:
            out.append(b)
    return out


# The entry points a table may name (what each one runs: ``kernels.gemm.smooth``).
CPU_IMPLS = ("linear", "addmm", "swap", "swap8", "numba", "dnnl")
GPU_IMPLS = ("triton", "cublas")


@dataclass(frozen=True)
class GemmConfig:
    """One tile configuration: Triton tile shape and launch knobs, and the CPU implementation."""

    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    group_m: int = 8  # swizzle: M-tiles that share N-tiles, for L2 reuse
    num_warps: int = 4
    num_stages: int = 3
    cpu_impl: str = "linear"  # one of CPU_IMPLS (see kernels.gemm.smooth.cpu_linear)
    split_k: int = 1  # CUDA: K ranges summed atomically (small M: more programs per tile)
    gpu_impl: str = "triton"  # CUDA: "triton" (SmoothGEMM) or "cublas" (the vendor GEMM)

    def __post_init__(self) -> None:
        if self.cpu_impl not in CPU_IMPLS:
            raise ValueError(f"cpu_impl {self.cpu_impl!r}: choose one of {CPU_IMPLS}")
        if self.gpu_impl not in GPU_IMPLS:
            raise ValueError(f"gpu_impl {self.gpu_impl!r}: choose one of {GPU_IMPLS}")
        # A table is a JSON file a person may edit: refuse tiles the Triton kernel cannot run
        # rather than let it compute garbage (group_m=0 divides by zero in the swizzle and gave
        # wrong rows) or fail inside the compiler (tl.arange needs powers of two; tl.dot needs
        # K >= 16 for 16-bit operands).
        pow2 = {"block_m": self.block_m, "block_n": self.block_n, "block_k": self.block_k}
        for name, v in pow2.items():
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name}={v}: a Triton tile side must be a power of two")
        if self.block_k < 16:
            raise ValueError(f"block_k={self.block_k}: tl.dot needs K tiles of at least 16")
        if self.group_m < 1 or self.split_k < 1 or self.num_stages < 1:
            raise ValueError(
                f"group_m={self.group_m}, split_k={self.split_k}, num_stages={self.num_stages}: "
                f"each must be at least 1"
            )
        if self.num_warps < 1 or self.num_warps & (self.num_warps - 1):
            raise ValueError(f"num_warps={self.num_warps}: must be a power of two")

    def key(self) -> str:
        if self.gpu_impl == "cublas":
            return f"cublas-{self.cpu_impl}"
        split = f"sk{self.split_k}" if self.split_k > 1 else ""
        return (
            f"m{self.block_m}n{self.block_n}k{self.block_k}g{self.group_m}"
            f"w{self.num_warps}s{self.num_stages}{split}-{self.cpu_impl}"
        )


def default_config(pm: int) -> GemmConfig:
    """The Triton tile a tuner starts from: the M tile no larger than the bucket."""
    bm = 16 if pm <= 16 else 32 if pm <= 32 else 64
    return GemmConfig(block_m=bm, block_n=64, block_k=32, group_m=8, num_warps=4, num_stages=3)


def untuned_config(pm: int, device: str) -> GemmConfig:
    """What a bucket no table tunes runs: the vendor GEMM on every device (``F.linear`` on CPU,
    cuBLAS on CUDA): the default Triton tiles trail cuBLAS (docs/perf.md, GPU section), so a
    Triton tile runs only where ``xyserve tune`` found it faster."""
    cfg = default_config(pm)
    return replace(cfg, gpu_impl="cublas") if device == "cuda" else cfg


@dataclass
class GemmTable:
    model: str = ""
    device: str = "cpu"
    budget: int = 0
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # op -> (N, K)
    entries: dict[str, dict[int, GemmConfig]] = field(default_factory=dict)  # op -> pm -> cfg
    machine: MachineSignature | None = None  # where it was tuned; None: not recorded
    # The precision it was tuned at; None: not recorded (version 2; see ``load``).
    dtype: str | None = "float32"
    allow_tf32: bool = False  # CUDA float32: the Triton dots ran in TF32
    quick: bool = False  # only the decode buckets were tuned (first start): others default
    version: int = TABLE_VERSION
    source: str = field(default="", repr=False, compare=False)  # the file it was loaded from
    _warned: bool = field(default=False, repr=False)

    def tuned_max(self) -> int:
        return max((pm for per in self.entries.values() for pm in per), default=0)

    def set(self, op: str, pm: int, cfg: GemmConfig) -> None:
        self.entries.setdefault(op, {})[pm] = cfg

    def lookup(self, op: str, m: int, n: int | None = None, k: int | None = None) -> GemmConfig:
        """Tuned config of (op, padded M); a sound default when untuned, with one warning for
        the whole table (the first miss), none for an empty table (its owner said why) or for
        buckets past a quick table's decode buckets (defaults by design)."""
        pm = padded_m(m)
        per = self.entries.get(op, {})
        cfg = per.get(pm)
        if cfg is None and pm == 1:  # a table from before M = 1 had its own bucket: 1-16's
            cfg = per.get(16)
        shape_ok = n is None or self.shapes.get(op) in (None, (n, k))
        if cfg is not None and shape_ok:
            return cfg
        silent = not self.entries or (self.quick and pm > self.tuned_max() and shape_ok)
        if not silent and not self._warned:
            self._warned = True
            warnings.warn(
                f"SmoothGEMM: no tuned config for op={op} M={m} (bucket {pm}) N={n} K={k}; "
                f"defaults for this and any other untuned shape, not repeated "
                f"(run `xyserve tune --model PATH`)",
                stacklevel=2,
            )
        return untuned_config(pm, self.device)

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "model": self.model,
            "device": self.device,
            "budget": self.budget,
            "machine": None if self.machine is None else self.machine.to_json(),
            "dtype": self.dtype,
            "allow_tf32": self.allow_tf32,
            "quick": self.quick,
            "shapes": {op: list(s) for op, s in self.shapes.items()},
            "entries": {
                op: {str(pm): asdict(c) for pm, c in sorted(per.items())}
                for op, per in self.entries.items()
            },
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table to ``path`` atomically: a reader (another engine starting) sees the
        old file or the new one, never a partial one, and of two processes tuning at once the
        last to finish wins."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.to_json(), indent=1))
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> GemmTable:
        """A saved table. Version 1 (no machine recorded) loads with ``machine`` None; before
        version 3 no precision was recorded: a CPU table was tuned in float32 (the only dtype
        ``xyserve tune`` used there), a CUDA one in the model's dtype, unknown here (None)."""
        try:
            data = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a GEMM table (unreadable JSON: {e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a GEMM table (a JSON {type(data).__name__})")
        if data.get("version") not in (1, 2, TABLE_VERSION):
            raise ValueError(
                f"{path}: GEMM table version {data.get('version')!r}; this xyserve reads "
                f"versions 1 to {TABLE_VERSION}"
            )
        try:
            return cls._from_json(data, path)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
            raise ValueError(f"{path}: not a GEMM table ({type(e).__name__}: {e})") from None

    @classmethod
    def _from_json(cls, data: dict, path: str | os.PathLike) -> GemmTable:
        machine = data.get("machine")
        device = data.get("device", "cpu")
        dtype = data.get("dtype", "float32" if device == "cpu" else None)
        t = cls(
            model=data.get("model", ""),
            device=device,
            dtype=None if dtype is None else str(dtype),
            allow_tf32=bool(data.get("allow_tf32", False)),
            budget=int(data.get("budget", 0)),
            machine=None if machine is None else MachineSignature.from_json(machine),
            quick=bool(data.get("quick", False)),
            shapes={op: (int(s[0]), int(s[1])) for op, s in data.get("shapes", {}).items()},
        )
        for op, per in data.get("entries", {}).items():
            for pm, c in per.items():
                try:
                    t.set(op, int(pm), GemmConfig(**c))
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{path}: entry {op} / {pm}: {e}") from None
        t.source = str(path)
        return t

    def gaps(self, shapes: dict[str, tuple[int, int]], budget: int) -> list[str]:
        """What this table lacks to cover a model of ``shapes`` ((N, K) per op) run with up to
        ``budget`` tokens a step: one phrase per op missing, tuned for other shapes, or short
        of some buckets (empty: every (op, bucket) is tuned)."""
        out = []
        want = buckets(budget)
        for op, shape in shapes.items():
            if op not in self.entries:
                out.append(f"{op}: not tuned")
            elif self.shapes.get(op) not in (None, tuple(shape)):
                out.append(f"{op}: tuned for N, K = {self.shapes[op]}, not {tuple(shape)}")
            elif lack := [pm for pm in want if pm not in self.entries[op]]:
                if lack[0] == 1 and 16 in self.entries[op]:  # ``lookup``'s rule for old tables
                    lack = lack[1:]
                if lack:
                    out.append(
                        f"{op}: {len(lack)} of {len(want)} M buckets untuned ({lack[0]}, ...)"
                    )
        return out


def cache_dir() -> Path:
    """``$XYSERVE_CACHE_DIR/gemm_tables``, else the XDG cache folder's ``xyserve/gemm_tables``
    (``$XDG_CACHE_HOME`` where it is an absolute path, as the XDG spec has it, else
    ``~/.cache``). Absolute, so that processes started in other folders share it."""
    root = os.environ.get("XYSERVE_CACHE_DIR")
    if root:
        return Path(root).expanduser().absolute() / "gemm_tables"
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xyserve" / "gemm_tables"


def _model_key(model_path: Path) -> str:
    """The model's GEMM shapes (what a table depends on), else its resolved path."""
    try:
        key = json.dumps(model_shapes(json.loads((model_path / "config.json").read_text())))
    except (OSError, KeyError, ValueError, TypeError):
        key = str(model_path.resolve())
    return hashlib.sha1(key.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Precision:
    """The numerics a table is tuned for and applied to: the dtype, and for float32 on CUDA
    whether the Triton dots may use TF32 (other cases ignore the flag)."""

    dtype: str = "float32"
    allow_tf32: bool = False

    def tf32(self, device: str) -> bool:
        return self.allow_tf32 and device == "cuda" and self.dtype == "float32"

    def tag(self, device: str) -> str:
        return self.dtype + ("-tf32" if self.tf32(device) else "")

    @classmethod
    def of(cls, table: GemmTable) -> Precision | None:
        return None if table.dtype is None else cls(table.dtype, table.allow_tf32)


def cache_path(
    model_path: str | os.PathLike, device: str, precision: Precision = Precision()
) -> Path:
    """Cache-folder location of a model's table on this machine: keyed by the model's GEMM
    shapes, the machine's signature and the precision (used for first-start tuning,
    ``xyserve tune --cache`` and models in read-only folders). Not by the folder's name: a
    table measures the shapes only (``xyserve tune`` times random weights), so models of the
    same shapes (a copy, another revision, a fine-tune) share one."""
    p = Path(model_path)
    sig = machine_signature(device).digest()
    return cache_dir() / f"{device}-{precision.tag(device)}-{_model_key(p)}-{sig}.json"


_reported: set[tuple[str, str]] = set()  # (table path, reason) already warned about


def mismatch(table: GemmTable, device: str, precision: Precision = Precision()) -> str | None:
    """Why ``table`` does not apply to this machine at ``precision`` (None: it applies)."""
    here = machine_signature(device)
    if table.device != device:
        return f"it was tuned for {table.device}, not {device}"
    tuned_on = table.machine
    if tuned_on is not None and not tuned_on.threads:  # recorded before threads were
        tuned_on = dataclasses.replace(tuned_on, threads=here.threads)
    if tuned_on is not None and dataclasses.replace(here, threads=tuned_on.threads) == tuned_on:
        if tuned_on.threads != here.threads:
            return (
                f"it was tuned with {tuned_on.threads} torch threads; this process runs "
                f"{here.threads} (tune again with this many)"
            )
    elif tuned_on != here:
        tuned = "an unrecorded machine" if tuned_on is None else tuned_on.describe()
        return f"it was tuned on {tuned}; this machine is {here.describe()}"
    tuned_at = Precision.of(table)
    if tuned_at is None:
        return f"it records no precision (re-tune it); this run is {precision.tag(device)}"
    if tuned_at.tag(device) != precision.tag(device):
        return f"it was tuned in {tuned_at.tag(device)}; this run is {precision.tag(device)}"
    return None


def applies_here(
    table: GemmTable,
    device: str,
    where: str | os.PathLike = "",
    precision: Precision = Precision(),
) -> bool:
    """Whether ``table`` was tuned on this machine at this precision; if not, one warning per
    table file."""
    why = mismatch(table, device, precision)
    if why is None:
        return True
    _report(where, why)
    return False


def _report(where: str | os.PathLike, why: str) -> None:
    """Warn that the table at ``where`` is not applied, once per (file, reason)."""
    key = (str(where), why)
    if key not in _reported:
        _reported.add(key)
        warnings.warn(f"SmoothGEMM: the GEMM table {where} is not applied: {why}", stacklevel=4)


def load_checked(
    path: str | os.PathLike, device: str, precision: Precision = Precision()
) -> GemmTable:
    """A table the user named explicitly: it applies here, or a ValueError says why not."""
    t = GemmTable.load(path)
    why = mismatch(t, device, precision)
    if why is not None:
        raise ValueError(f"GEMM table {path} does not apply here: {why}")
    return t


def find_table(
    model_path: str | os.PathLike, device: str = "cpu", precision: Precision = Precision()
) -> GemmTable | None:
    """This machine's table for the model at ``precision``: the one next to the model if it
    was tuned here at that precision, else the cache folder's; None when there is none (one
    that does not apply is reported once)."""
    for p in (Path(model_path) / TABLE_FILE, cache_path(model_path, device, precision)):
        if p.is_file():
            try:
                t = GemmTable.load(p)
            except (OSError, ValueError) as e:  # truncated, corrupt, another schema version
                _report(p, f"it cannot be read: {e}")
                continue
            if t.device == device and applies_here(t, device, p, precision):
                return t
    return None


def model_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(N, K) of each linear op of a Llama/Qwen2-family model, from its config.json."""
    h = int(config["hidden_size"])
    hq = int(config["num_attention_heads"])
    hkv = int(config.get("num_key_value_heads") or hq)
    # HF's default where head_dim is absent, as the model's loader reads it
    # (model/config.py; plan imports nothing outside plan): Qwen3's is 128
    qwen3 = "Qwen3ForCausalLM" in (config.get("architectures") or [])
    d = int(config.get("head_dim") or (128 if qwen3 else h // hq))
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


@dataclass
class SmoothPlan:
    """SmoothGEMM's plan of one step: its bucket (the virtually padded M), and the configs
    already looked up this step, so that each op's lookup happens once per step."""

    num_tokens: int
    padded_m: int
    configs: dict[tuple[str, int, int, int], GemmConfig] = field(default_factory=dict)

    @classmethod
    def build(cls, num_tokens: int) -> SmoothPlan:
        return cls(num_tokens, padded_m(num_tokens))
