"""The model runner: turns a scheduler output into one forward pass over the flat token batch."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from xyserve.engine.request import Request
from xyserve.engine.runner_fused import ROW_CHECKS, FusedDecode
from xyserve.engine.scheduler import ScheduledStage, SchedulerOutput
from xyserve.engine.step_graphs import GraphOptions, StepGraphs
from xyserve.engine.step_inputs import StepInputs, StepLists, tree_mask
from xyserve.kernels import ops
from xyserve.kernels.backend import get_attention_backend, get_gemm_backend
from xyserve.model.llama import LlamaModel, StepContext
from xyserve.plan.attention_metadata import AttentionMetadata
from xyserve.plan.token_table import TokenTable

log = logging.getLogger("xyserve")


class StepResult:
    """A step's logits on the host and each request's rows in them.

    On CUDA the logits travel to pinned host memory asynchronously (``to_host``): the caller's
    host work that does not need them (its bookkeeping of the step's requests) runs while the
    GPU finishes, and the first read of ``logits`` waits for the copy's event.
    """

    def __init__(
        self,
        logits: torch.Tensor,
        rows: dict[str, slice],
        ready: torch.cuda.Event | None = None,
        argmax: np.ndarray | None = None,
        prompt_rows: dict[str, tuple[int, slice]] | None = None,
    ) -> None:
        self._logits = logits  # [R, V] float32, one row per logits position
        self.rows = rows  # request id -> its rows in ``logits`` (verify has several)
        # request id -> (first position, rows in ``logits``) of its prompt logprobs' positions
        self.prompt_rows = prompt_rows or {}
        self._ready = ready
        # [R] each row's argmax (first index on ties) where the step computed it already (the
        # CPU fused call), for greedy rows the sampler and verify would otherwise scan again
        self.argmax = argmax

    def argmax_of(self, rows: slice | list[int]) -> list[int] | None:
        """The step's own argmax of logits rows ``rows``, or None where it has none."""
        return None if self.argmax is None else self.argmax[rows].tolist()

    @property
    def logits(self) -> torch.Tensor:
        if self._ready is not None:
            self._ready.synchronize()
            self._ready = None
        return self._logits

    @classmethod
    def to_host(
        cls,
        logits: torch.Tensor,
        rows: dict[str, slice],
        prompt_rows: dict[str, tuple[int, slice]] | None = None,
    ) -> StepResult:
        """``logits`` (on the model's device) as a result on the host: a CPU tensor as it is,
        a CUDA one copied without blocking into pinned memory, with an event to wait on."""
        if logits.device.type != "cuda":
            return cls(logits.cpu(), rows, prompt_rows=prompt_rows)
        host = torch.empty(logits.shape, dtype=logits.dtype, pin_memory=True)
        host.copy_(logits, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(host, rows, ready, prompt_rows=prompt_rows)


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        num_blocks: int,
        block_size: int,
        attention_backend: str,
        gemm_backend: str,
        gemm_kwargs: dict | None = None,
        allow_tf32: bool = False,
        graphs: GraphOptions | None = None,
        cpu_fused_decode: str | None = "off",
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.attn = get_attention_backend(attention_backend)
        if graphs is not None:
            why = StepGraphs.unsupported(self.attn, model.device) if graphs.capture else None
            if why is not None:
                log.info("CUDA graphs: off (%s); every step runs eagerly", why)
                graphs = None
        cfg = model.cfg
        # Padded steps write their padding tokens' K/V into one more block, which no request
        # owns (``engine.padded_step``).
        shape = (num_blocks + (graphs is not None), block_size, cfg.num_kv_heads, cfg.head_dim)
        # One [L, ...] tensor each for K and V, every layer a view of it: the fused decode path
        # (``engine.runner_fused``) reads all layers' caches as one array.
        # On the CPU they stream from huge pages (``ops.memory``).
        stacked = tuple(
            ops.memory.tensor_zeros((cfg.num_layers, *shape), model.dtype)
            if model.device.type == "cpu"
            else torch.zeros((cfg.num_layers, *shape), dtype=model.dtype, device=model.device)
            for _ in range(2)
        )
        self.kv_caches = [(stacked[0][i], stacked[1][i]) for i in range(cfg.num_layers)]
        # every layer's slots in one view each ([L, slots, Hkv, D]): ``move_slots``
        self._kv_slots = tuple(c.view(c.shape[0], -1, *c.shape[3:]) for c in stacked)
        if hasattr(self.attn, "warmup"):  # sets its dtype, builds its CPU kernels now
            self.attn.warmup(model.device, model.dtype)
        ops.warmup(model.device, model.dtype)
        # Small CPU steps as one fused call (``cpu_fused_decode``: auto | on | off | None, the
        # environment's choice; ``engine.runner_fused``); made before the GEMM backend's
        # warm-up, which may cache a layout of the weights that this re-points.
        self.fused = FusedDecode.create(
            cpu_fused_decode, model, stacked if graphs is None else None, block_size
        )
        self.gemm = get_gemm_backend(gemm_backend, **(gemm_kwargs or {}))
        if hasattr(self.gemm, "warmup"):
            self.gemm.warmup(model.device, model.dtype)
        self._num_blocks = num_blocks
        # Float32 precision on CUDA: the Triton backends (meta, smooth) take the flag. Torch's
        # own ops (the sdpa/torch backends, embeddings) follow torch's process-wide
        # ``torch.backends.cuda.matmul.allow_tf32``, which an engine must not change under other
        # code in the same process.
        for backend in (self.attn, self.gemm):
            if hasattr(backend, "allow_tf32"):
                backend.allow_tf32 = allow_tf32
        # Decode steps of an unchanged batch patch the previous step's inputs and plans
        # (``prepare``); False builds every step afresh.
        self.reuse_plans = True
        self._last: StepInputs | None = None
        # Steps at padded sizes over static buffers (``engine.step_graphs``): CUDA graphs when
        # ``graphs.capture``, else the same padded forward run eagerly (tests on CPU).
        self.graphs: StepGraphs | None = None
        if graphs is not None:
            self.graphs = StepGraphs(
                model, self.kv_caches, self.attn, self.gemm, num_blocks * block_size, graphs
            )
            if graphs.capture:
                self._capture()
        if self.fused is not None and self.fused.calibrate:
            self._fused_step_sizes()

    def _fused_step_sizes(self, reps: int = 3) -> None:
        """The largest step size (of ``runner_fused.ROW_CHECKS``) up to which the fused call
        runs a step faster than the eager forward (none: the fused call is dropped), timed
        here on scratch steps, best of ``reps`` interleaved: one request of that many new tokens after a block of context
        (a verify's shape), in the cache's first blocks, which no request owns yet (their K/V
        is written before any request reads it). Logged."""
        fused, bs = self.fused, self.block_size
        times = {}
        for n in ROW_CHECKS:
            blocks = -(-(bs + n) // bs)
            if blocks > self._num_blocks:
                break
            r = Request("fused-size-check", [0] * (bs + n), max_tokens=1)
            out = SchedulerOutput(stages=[ScheduledStage(r, n, 0, bs)])
            tables = {r.request_id: list(range(blocks))}
            best = {n: float("inf"), 0: float("inf")}
            for i in range(reps + 1):  # round 0 warms both paths up, untimed
                for rows in (n, 0):
                    fused.max_rows = rows
                    t0 = time.perf_counter()
                    self.execute(out, tables)
                    if i:
                        best[rows] = min(best[rows], time.perf_counter() - t0)
            times[n] = (best[n] * 1e3, best[0] * 1e3)
            if best[n] >= best[0]:
                break
        fused.max_rows = max((n for n, (f, e) in times.items() if f < e), default=0)
        self._last = None
        threads = ", ".join(f"{ms:.2f} ms on {n}" for n, ms in sorted(fused.thread_ms.items()))
        sizes = ", ".join(f"{n}: {f:.2f} vs {e:.2f}" for n, (f, e) in times.items())
        if fused.max_rows == 0:
            self.fused = None  # its panels go with it (the model keeps its own linear layers)
            log.info(
                "CPU fused decode: off (a one-row step fused vs eager: %s ms); steps run the "
                "eager forward",
                sizes,
            )
            return
        log.info(
            "CPU fused decode: on for steps of up to %d row(s), %d thread(s) (one row fused "
            "took %s thread(s); steps, fused vs eager ms: %s)",
            fused.max_rows,
            fused.threads,
            threads,
            sizes,
        )

    def _capture(self) -> None:
        """Capture the step graphs, said in a log line. A capture that fails (a kernel or an op
        that a graph cannot hold on this GPU and software) is logged with its cause and the
        engine runs eagerly, as with ``enforce_eager``, rather than not starting."""
        t0 = time.perf_counter()
        try:
            self.graphs.capture()
        except Exception:
            log.exception("CUDA graphs: capture failed; every step runs eagerly")
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.graphs = None
            return
        log.info(
            "CUDA graphs: on; steps of up to %d tokens without a token tree are padded to one "
            "of %d capture sizes %s (captured in %.1f s)",
            self.graphs.sizes[-1],
            len(self.graphs.sizes),
            self.graphs.sizes,
            time.perf_counter() - t0,
        )

    @staticmethod
    def bytes_per_block(model_cfg, block_size: int, dtype: torch.dtype) -> int:
        elem = torch.tensor([], dtype=dtype).element_size()
        per_layer = 2 * block_size * model_cfg.num_kv_heads * model_cfg.head_dim * elem
        return per_layer * model_cfg.num_layers

    def copy_blocks(self, copies: list[tuple[int, int, int]]) -> None:
        for src, dst, n in copies:
            if src == dst:
                continue
            for k, v in self.kv_caches:
                k[dst, :n] = k[src, :n]
                v[dst, :n] = v[src, :n]

    def build_table(self, out: SchedulerOutput, block_tables: dict[str, list[int]]) -> TokenTable:
        table = TokenTable(block_size=self.block_size)
        for st in out.stages:
            rid = st.request.request_id
            table.add(
                rid,
                st.num_tokens,
                st.kv_len,
                block_tables[rid],
                num_spec_tokens=st.num_spec_tokens,
                is_prefill=st.is_prefill,
                tree_mask=tree_mask(st),  # spec: token trees verify under their own mask
            )
        return table

    def move_slots(self, pairs: list[tuple[int, int]]) -> None:
        """Copy K/V from cache slot ``src`` to ``dst`` for each pair, all read before any write
        (a token tree's accepted path moved to consecutive positions)."""
        if not pairs:
            return
        dev = self.model.device
        src = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=dev)
        dst = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=dev)
        for cache in self._kv_slots:  # all layers at once: one gather and scatter each
            cache[:, dst] = cache[:, src]

    def prepare(
        self,
        out: SchedulerOutput,
        block_tables: dict[str, list[int]],
        table: TokenTable | None = None,
    ) -> StepInputs:
        """The step's inputs and plans: the previous step's patched when this step is the next
        of the same decode batch on CPU (``StepInputs.advance``), else built afresh. ``table``:
        the step's token table when the caller has built it already."""
        if table is None:
            table = self.build_table(out, block_tables)
        last, self._last = self._last, None
        inputs = None
        if self.reuse_plans and last is not None and not out.copies:
            inputs = last.advance(out, table, self._replan)
        if inputs is None:
            inputs = self.build_inputs(out, table)
        self._last = inputs
        return inputs

    def _replan(self, plan: Any, meta: AttentionMetadata) -> Any:
        """The attention plan of ``meta``: ``plan`` patched where the backend can, else new."""
        advanced = self.attn.advance(plan, meta) if hasattr(self.attn, "advance") else None
        if advanced is not None:
            return advanced
        cfg = self.model.cfg
        return self.attn.plan(meta, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)

    def build_inputs(self, out: SchedulerOutput, table: TokenTable) -> StepInputs:
        """The step's inputs and plans, built from nothing (the reference for ``prepare``)."""
        lists = StepLists.build(out, table)
        dev = self.model.device
        meta = AttentionMetadata.build(table, dev)
        cfg = self.model.cfg
        return StepInputs(
            ids=torch.tensor(lists.ids, dtype=torch.long, device=dev),
            positions=torch.tensor(lists.positions, dtype=torch.long, device=dev),
            logit_rows=torch.tensor(lists.logit_rows, dtype=torch.long, device=dev),
            rows=lists.rows,
            prompt_rows=lists.prompt_rows,
            meta=meta,
            attn_plan=self.attn.plan(meta, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim),
            gemm_plan=self.gemm.plan(len(lists.ids)),
        )

    def execute(self, out: SchedulerOutput, block_tables: dict[str, list[int]]) -> StepResult:
        self.copy_blocks(out.copies)
        table = None
        # Prompt logprobs' rows come from the eager forward only: the padded steps and the
        # fused call return the sampled rows alone.
        eager_only = out.has_prompt_logits
        if self.graphs is not None and not eager_only:
            table = self.build_table(out, block_tables)
            size = self.graphs.size_for(table)
            if size is not None:
                self._last = None  # the padded buffers are no base for a patched eager step
                lists = StepLists.build(out, table)
                logits = self.graphs.run(size, lists, table)
                return StepResult.to_host(logits, lists.rows)
        if self.fused is not None and not eager_only and self.fused.takes(out):
            self._last = None  # the eager inputs were not advanced: no base for a patched step
            if table is None:
                table = self.build_table(out, block_tables)
            logits, rows, argmax = self.fused.run(out, table, block_tables)
            return StepResult(logits, rows, argmax=argmax)
        inputs = self.prepare(out, block_tables, table)  # a step too large: eager, same table
        ctx = StepContext(
            positions=inputs.positions,
            slot_mapping=inputs.meta.slot_mapping,
            attn_backend=self.attn,
            attn_plan=inputs.attn_plan,
            gemm_backend=self.gemm,
            gemm_plan=inputs.gemm_plan,
        )
        try:
            logits = self.model.forward(inputs.ids, ctx, self.kv_caches, inputs.logit_rows)
        except BaseException:
            self._last = None  # a step that did not run is no base for the next
            raise
        return StepResult.to_host(logits, dict(inputs.rows), dict(inputs.prompt_rows))
