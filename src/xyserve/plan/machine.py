"""The signature of the machine a tuning table was measured on.

A tuned table is a set of measurements: which GEMM entry point won per (op, bucket) on one CPU
(or GPU). On another CPU the ranking can differ (other vector width, cache sizes, core count),
so a table records where it was tuned and is only applied where the signature is equal.

CPU: vendor, model name, the ISA flags the kernels depend on (as LLVM, hence numba, sees them:
that is what the kernels are compiled for), the cores this process may use, and the cache
sizes, and the torch threads the GEMMs ran on (the vendor GEMM splits its work over them, so
the fastest entry point at a given M can change with their number). CUDA: the device name and
compute capability.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path

# ISA features that change what the CPU kernels (numba / LLVM, and the vendor GEMM) can use.
KERNEL_FLAGS: tuple[str, ...] = (
    "sse4.2",
    "avx",
    "fma",
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512bf16",
    "avx512fp16",
    "amx-tile",
    "amx-bf16",
    "neon",
    "sve",
)


@dataclass(frozen=True)
class MachineSignature:
    """What a tuning table's measurements depend on; equal signatures share tables."""

    kind: str  # "cpu" or "cuda"
    vendor: str = ""
    model: str = ""
    flags: tuple[str, ...] = ()  # sorted subset of KERNEL_FLAGS (CPU)
    cores: int = 0  # logical CPUs this process may run on (CPU)
    caches: dict[str, int] = field(default_factory=dict)  # "L1d" / "L2" / "L3" -> bytes
    capability: str = ""  # CUDA compute capability, "9.0"
    threads: int = 0  # torch threads the CPU GEMMs ran on; 0: not recorded (before they were)

    def to_json(self) -> dict:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d

    @classmethod
    def from_json(cls, d: dict) -> MachineSignature:
        return cls(
            kind=str(d.get("kind", "")),
            vendor=str(d.get("vendor", "")),
            model=str(d.get("model", "")),
            flags=tuple(sorted(str(f) for f in d.get("flags", ()))),
            cores=int(d.get("cores", 0)),
            caches={str(k): int(v) for k, v in (d.get("caches") or {}).items()},
            capability=str(d.get("capability", "")),
            threads=int(d.get("threads", 0)),
        )

    def __hash__(self) -> int:  # caches is a dict: hash the canonical JSON instead
        return hash(self.digest())

    def digest(self) -> str:
        """A short stable id, for cache file names."""
        return hashlib.sha1(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        if self.kind == "cuda":
            return f"{self.model} (sm {self.capability})"
        l3 = self.caches.get("L3", 0) >> 20
        isa = (
            "AVX-512" if "avx512f" in self.flags else "AVX2" if "avx2" in self.flags else "no AVX2"
        )
        threads = f", {self.threads} torch threads" if self.threads else ""
        return (
            f"{self.vendor} {self.model}, {isa}, {self.cores} cores{threads}, {l3} MiB L3".strip()
        )


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def host_flags() -> tuple[str, ...]:
    """The host's KERNEL_FLAGS, as LLVM sees them (what numba compiles for); /proc/cpuinfo's
    names where llvmlite is missing."""
    try:
        from llvmlite import binding as llvm

        feats = {k for k, v in llvm.get_host_cpu_features().items() if v}
    except Exception:  # pragma: no cover - llvmlite comes with numba, a dependency
        names = set(_cpuinfo().get("flags", "").split())
        feats = {n.replace("_", "").replace("sse4", "sse4.") for n in names}
        feats |= {n.replace("_", "-") for n in names if n.startswith("amx")}
    return tuple(sorted(f for f in KERNEL_FLAGS if f in feats))


def _cache_sizes() -> dict[str, int]:
    """Per-level cache sizes in bytes from sysfs (Linux); empty elsewhere."""
    out: dict[str, int] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")):
        try:
            level = (idx / "level").read_text().strip()
            kind = (idx / "type").read_text().strip()
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        num = size[:-1] if size[-1:] in "KMG" else size
        if num.isdigit():
            out[f"L{level}{'d' if kind == 'Data' else ''}"] = int(num) * mult
    return out


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@cache
def _cpu_hardware() -> MachineSignature:
    info = _cpuinfo()
    return MachineSignature(
        kind="cpu",
        vendor=info.get("vendor_id", "") or platform.machine(),
        model=info.get("model name", "") or platform.processor(),
        flags=host_flags(),
        cores=usable_cores(),
        caches=_cache_sizes(),
    )


def cpu_signature() -> MachineSignature:
    """This CPU's signature, with the torch threads this process runs now."""
    import torch

    return replace(_cpu_hardware(), threads=torch.get_num_threads())


def cuda_signature(index: int = 0) -> MachineSignature:  # pragma: no cover - needs a GPU
    import torch

    props = torch.cuda.get_device_properties(index)
    return MachineSignature(
        kind="cuda", vendor="NVIDIA", model=props.name, capability=f"{props.major}.{props.minor}"
    )


def machine_signature(device: str = "cpu") -> MachineSignature:
    """The signature of the machine that runs ``device``'s kernels."""
    return cuda_signature() if device.startswith("cuda") else cpu_signature()
