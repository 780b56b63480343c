"""The CPU small-step fast path: a decode step of a few rows as one fused numba call.

At batch 1 on CPU a decode step of a float32 model is bound by streaming its weights, but the
eager forward (``LlamaModel.forward``) spends more than that: each layer is a dozen calls into
torch, MKL and the numba kernels, and each MKL GEMV and numba kernel is a fork and join of its
own OpenMP pool (docs/perf.md, "Batch 1: one fused call per decode step"). Here the whole
forward of such a step -- embedding, norms, the linear layers split by output columns across
the threads, RoPE, the paged K/V writes, attention over the row's block table, SiLU, the
residuals and the lm_head -- runs in ``kernels.cpu.fused_forward``, the kernel the fused draft
uses, on the runner's own K/V cache.

What takes it: a step of at most ``max_rows`` new tokens (decodes, chain or tree verifies, a
prefill chunk that small), on a float32 or bfloat16 model on the CPU. A bfloat16 model's
step computes in float32 from its bfloat16 weights (exact as loaded) and keeps its K/V caches
bfloat16 (rounded as stored), so it is the eager bfloat16 forward without the roundings of its
activations between ops. A causal row sees its request's
positions up to its own; a tree node sees the history and the stage's real tokens as a prefix
of its block table and its ancestors' slots (its own included) as extra keys, at its depth's
RoPE position. Whether it is on: ``mode`` ``"off"``, ``"on"`` (one-row steps), or ``"auto"``
(the engine's default, or ``$XYSERVE_CPU_FUSED_DECODE``): the fused call's thread count
starts as the faster of one and torch's count on one row and is then chosen call by call from
the calls' times (``engine.thread_choice``: another process's load can make two threads
many times slower than one), then the runner times steps of each size of
``ROW_CHECKS`` both ways (``ModelRunner``) and lets the fused call take steps up to the
largest size at which it is faster than the eager forward, none if it loses at one row. The
log line says which path runs, for which steps, and the times.

The weights are packed once (``spec.draft_forward.pack_model``: layers stacked, the linear
layers as panels, of bfloat16 bits where the checkpoint's values are all bfloat16). The
model's own tensors are then re-pointed at the packed arrays where the layouts agree (norms,
embedding, biases); the linear layers are the one part held twice: the eager forward's [out,
in] tensors and the fused call's panels (half their size for a bfloat16 checkpoint). A
bfloat16 model keeps all its tensors (the packed norms and embedding are float32 copies).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from xyserve.engine.scheduler import SchedulerOutput
from xyserve.engine.step_inputs import StepLists, tree_mask
from xyserve.engine.thread_choice import ThreadChoice
from xyserve.kernels.ops import as_numpy
from xyserve.kernels.ops import fused_forward as ff
from xyserve.model.llama import LlamaModel
from xyserve.plan.token_table import TokenTable, visible_keys
from xyserve.spec.draft_forward import pack_model

log = logging.getLogger("xyserve")

MODES = ("auto", "on", "off")
ENV = "XYSERVE_CPU_FUSED_DECODE"  # the mode where the engine's ``cpu_fused_decode`` is unset
ROW_CHECKS = (1, 2, 4, 8, 16, 32, 64)  # step sizes the runner times both ways at start (auto)
MAX_ROWS = 1  # the steps that take the fused call under "on" (no check)
# the engine dtypes the fused call runs (bfloat16 K/V caches read as their uint16 bits)
DTYPES = (torch.float32, torch.bfloat16)


def resolve_mode(mode: str | None) -> str:
    """The mode in force: ``mode``, or where it is None the environment's value, or ``auto``;
    refused unless one of ``MODES``."""
    if mode is None:
        env = os.environ.get(ENV, "").strip().lower() or "auto"
        if env not in MODES:
            raise ValueError(f"{ENV}={env!r}: expected one of {', '.join(MODES)}")
        return env
    if mode not in MODES:
        raise ValueError(f"cpu_fused_decode={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def share_weights(model: LlamaModel, w: ff.PackedWeights) -> None:
    """Point ``model``'s tensors at the packed arrays where the two layouts agree (same values,
    one copy in memory): everything but the linear layers, which the fused call reads as
    panels and the eager forward as the model's own [out, in] tensors."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a)

    tied = model.lm_head is model.embed
    model.embed, model.norm = t(w.embed), t(w.final_norm)
    if tied:
        model.lm_head = model.embed
    for i, layer in enumerate(model.layers):
        layer.input_norm, layer.post_norm = t(w.input_norm[i]), t(w.post_norm[i])
        if layer.qkv_bias is not None:
            layer.qkv_bias = t(w.qkv_bias[i])
        if layer.o_bias is not None:
            layer.o_bias = t(w.o_bias[i])
        if layer.qk_norm is not None:
            layer.qk_norm = (t(w.q_norm[i]), t(w.k_norm[i]))


def _why_not(model: LlamaModel, kv_caches) -> str | None:
    """Why the fused call cannot run ``model``'s steps (None: it can)."""
    if not ff.available():
        return "numba is not installed"
    if model.device.type != "cpu" or model.dtype not in DTYPES:
        where = f"{model.device.type} in {str(model.dtype).removeprefix('torch.')}"
        return f"the model runs on {where}; the fused call needs CPU float32 or bfloat16"
    if kv_caches is None:
        return "padded steps (CUDA graphs' eager twin) keep the eager forward"
    return None


def _ms(fn: Callable[[], object]) -> float:
    """One call's wall time (ms)."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def fastest_threads(
    w: ff.PackedWeights, block_size: int, cache_dtype: type = np.float32, reps: int = 5
) -> dict[int, float]:
    """One row (a full block of context) through the fused call on a scratch cache (of
    ``cache_dtype``, as the engine's), on one thread and on torch's count, best of ``reps``
    interleaved (ms per thread count)."""
    k, v = ff.new_cache(w, 1, block_size, cache_dtype)
    p = block_size - 1
    one = np.array([0], np.int64)
    rows = ff.Rows(
        ids=one, pos=np.array([p]), slots=np.array([p]), table_of=one, tables=one[None],
        ctx_len=np.array([p + 1]), extra_off=np.zeros(2, np.int64),
        extra_slots=np.zeros(0, np.int64), out_rows=one,
    )  # fmt: skip
    counts = sorted({1, torch.get_num_threads()})
    fused = {n: float("inf") for n in counts}
    for n in counts:  # compiles, or loads numba's cache
        ff.forward(w, k, v, rows, parallel=True, threads=n)
    for _ in range(reps):
        for n in counts:
            fused[n] = min(fused[n], _ms(lambda n=n: ff.forward(w, k, v, rows, True, n)))
    return fused


class FusedDecode:
    """The packed model and the runner's cache as the fused call reads them; :meth:`run` takes
    a step that :meth:`takes`."""

    def __init__(
        self,
        model: LlamaModel,
        kv_caches: tuple[torch.Tensor, torch.Tensor],
        block_size: int,
        threads: int,
        max_rows: int = MAX_ROWS,
    ) -> None:
        # a bfloat16 engine's linear layers on AMX where the host has it (their inputs then
        # rounded to bfloat16, as its eager forward rounds them); a float32 one's stay FMAs
        self.weights = pack_model(model, amx_tiles=model.dtype == torch.bfloat16)
        if model.dtype == torch.float32:  # else the eager forward keeps its bfloat16 tensors
            share_weights(model, self.weights)
        # [L, blocks, bs, Hkv, D], bfloat16 as its bits (the fused call widens them as read)
        self.k_cache, self.v_cache = (as_numpy(c) for c in kv_caches)
        self.block_size = block_size
        self.threads = threads
        self.max_rows = max_rows
        self.calibrate = False  # auto: the runner times steps both ways at start
        self.thread_ms: dict[int, float] = {}  # auto: one fused row per thread count tried
        # auto: each call's thread count, from the calls' times (the machine's load moves it)
        self.chooser: ThreadChoice | None = None

    @classmethod
    def create(
        cls,
        mode: str | None,
        model: LlamaModel,
        kv_caches: tuple[torch.Tensor, torch.Tensor] | None,
        block_size: int,
    ) -> FusedDecode | None:
        """The fast path for ``model`` under ``mode`` (see the module docstring), or None; logs
        the choice. ``kv_caches``: the runner's caches as two [L, ...] tensors (None where the
        runner does not keep them stacked, e.g. padded CUDA-graph steps)."""
        mode = resolve_mode(mode)
        if mode == "off" or (mode == "auto" and model.device.type != "cpu"):
            return None  # a GPU engine: nothing to say
        why = _why_not(model, kv_caches)
        if why is not None:
            if mode == "on":
                raise ValueError(f"cpu_fused_decode='on': {why}")
            log.info("CPU fused decode: off (%s)", why)
            return None
        fast = cls(model, kv_caches, block_size, torch.get_num_threads())
        if mode == "on":
            log.info("CPU fused decode: on (forced), %d thread(s)", fast.threads)
            return fast
        # auto: the thread count here; whether it runs, and for which steps, the runner
        # decides by timing steps both ways (``ModelRunner``), and says so. (A float32 model
        # keeps its re-pointed tensors either way: same values, one copy.)
        fast.thread_ms = fastest_threads(fast.weights, block_size, fast.k_cache.dtype.type)
        fast.threads = min(fast.thread_ms, key=fast.thread_ms.get)
        if len(fast.thread_ms) > 1:
            fast.chooser = ThreadChoice(tuple(sorted(fast.thread_ms)), fast.threads)
        fast.calibrate = True
        return fast

    def takes(self, out: SchedulerOutput) -> bool:
        """Whether the step is small enough and stays inside the model's RoPE tables (the
        kernel checks no index: a position past them is left to the eager forward, which
        refuses it)."""
        if out.num_tokens > self.max_rows:
            return False
        limit = self.weights.cos.shape[0]
        return all(st.kv_len <= limit for st in out.stages)

    def run(
        self, out: SchedulerOutput, table: TokenTable, block_tables: dict[str, list[int]]
    ) -> tuple[torch.Tensor, dict[str, slice], np.ndarray | None]:
        """The step's logits [R, V] (R: its sampled rows, in ``StepLists`` order), each
        request's rows in them (rows: see the module docstring), and the kernel's argmax of
        each row (first index on ties), None where a logit is not finite (NaN and infinities
        follow torch's argmax rules, so those steps take the sampler's own)."""
        lists = StepLists.build(out, table)
        bs = self.block_size
        width = max(len(block_tables[st.request.request_id]) for st in out.stages)
        tables = np.zeros((len(out.stages), max(1, width)), np.int64)
        table_of: list[int] = []
        cache_pos: list[int] = []  # where each row's K/V goes: its stage's next positions
        ctx: list[int] = []
        extra_off, extra = [0], []
        for i, st in enumerate(out.stages):
            blocks = block_tables[st.request.request_id]
            tables[i, : len(blocks)] = blocks
            table_of.extend([i] * st.num_tokens)
            cache_pos.extend(range(st.context_len, st.kv_len))
            mask = tree_mask(st)
            for q in range(st.num_tokens):
                prefix, beyond = visible_keys(st.context_len, q, mask)
                ctx.append(prefix)
                extra.extend(blocks[p // bs] * bs + p % bs for p in beyond)
                extra_off.append(len(extra))
        kpos = np.asarray(cache_pos, np.int64)
        owner = np.asarray(table_of, np.int64)
        rows = ff.Rows(
            ids=np.asarray(lists.ids, np.int64),
            pos=np.asarray(lists.positions, np.int64),
            slots=tables[owner, kpos // bs] * bs + kpos % bs,
            table_of=owner,
            tables=tables,
            ctx_len=np.asarray(ctx, np.int64),
            extra_off=np.asarray(extra_off, np.int64),
            extra_slots=np.asarray(extra, np.int64),
            out_rows=np.asarray(lists.logit_rows, np.int64),
        )
        chooser = self.chooser
        if chooser is None:
            logits, argmax = ff.forward(
                self.weights, self.k_cache, self.v_cache, rows, parallel=True, threads=self.threads
            )
        else:  # one row, a few, or more: each its own choice (their best counts differ)
            n = len(lists.ids)
            key = 0 if n == 1 else 1 if n <= 4 else 2
            threads = chooser.pick(key)
            t0 = time.perf_counter()
            logits, argmax = ff.forward(
                self.weights, self.k_cache, self.v_cache, rows, parallel=True, threads=threads
            )
            chooser.observe(key, threads, time.perf_counter() - t0)
        return torch.from_numpy(logits), lists.rows, argmax if np.isfinite(logits).all() else None
