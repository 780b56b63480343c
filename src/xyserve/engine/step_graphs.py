"""Steps run at padded sizes over static buffers: captured CUDA graphs on CUDA, eager elsewhere.

A step of a small model on a GPU is bound by its host work: a hundred-odd kernel launches a
step, each with its Python. Captured once per *capture size* (vLLM's convention: 1, 2, 4, then
multiples of 8, then of 16), the whole forward -- embeddings, every layer's GEMMs, rotations,
cache writes, the one Meta-Attention launch per layer, the final norm and the lm_head -- replays
as one graph launch. A step of ``n`` tokens (any P/D/V mix without a token tree: Meta-Attention
runs every stage type in one launch, so mixed steps capture as well as decode-only ones) runs in
the graph of the smallest capture size ``>= n``, after its inputs are written into that size's
static buffers (``engine.padded_step``) and its task table into the attention backend's static
plan (``plan.triton_attention.StaticTritonPlan``). Larger steps, and steps with a token tree,
run eagerly as before.

What a captured forward must not do, and why it does not here:

* read a device value on the host (``.item()``, ``.tolist()``, ``bool(t)``, a data-dependent
  shape such as ``nonzero``): every decision the forward makes is taken from shapes and host
  plans, never from tensor values (``tests/xyserve/test_step_graphs.py`` runs the padded forward
  under a guard that fails on any such read);
* change a pointer, a grid or a constexpr between replays: inputs, task table and block tables
  live in buffers allocated once per size; the Triton grid is the persistent worker count; the
  GEMM bucket is the capture size's; tensors the forward allocates come from the graphs' shared
  memory pool and are the same on every replay;
* compile: warm-up runs before each capture compile the Triton kernels.

On CPU nothing is captured; the same object runs the same forward eagerly over the same padded
buffers, which is how the tests check the padding on a machine without a GPU.
"""

from __future__ import annotations

import bisect
import sys
from dataclasses import dataclass
from typing import Any

import torch

from xyserve.engine.capture_sizes import check_capture_sizes
from xyserve.engine.padded_step import PaddedStep
from xyserve.engine.step_inputs import StepLists
from xyserve.model.llama import LlamaModel, StepContext
from xyserve.plan.token_table import TokenTable

WARMUP_RUNS = 2  # eager runs of each size before its capture (the first compiles)


@dataclass
class GraphOptions:
    sizes: list[int]  # capture sizes, in tokens
    max_blocks: int  # block-table width: the blocks of the longest admitted context
    capture: bool  # CUDA graphs; False runs the padded steps eagerly (CPU, tests)


class StepGraphs:
    """The padded steps of one model runner: their buffers, plans and (on CUDA) graphs."""

    def __init__(
        self,
        model: LlamaModel,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        attn: Any,
        gemm: Any,
        scratch_slot: int,
        options: GraphOptions,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.attn = attn
        self.gemm = gemm
        self.sizes = check_capture_sizes(list(options.sizes))
        cfg = model.cfg
        self.heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        self.steps: dict[int, PaddedStep] = {}
        self.static_plans: dict[int, Any] = {}
        self.gemm_plans: dict[int, Any] = {}
        for size in self.sizes:
            step = PaddedStep.allocate(size, options.max_blocks, scratch_slot, model.device)
            self.steps[size] = step
            # A unit is a (tile, KV head) and every tile has a row: size * Hkv units at most.
            capacity = size * cfg.num_kv_heads
            make = getattr(attn, "static_plan", None)
            meta = step.meta(TokenTable())
            self.static_plans[size] = make(meta, *self.heads, capacity) if make else None
            self.gemm_plans[size] = gemm.plan(size)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        # Per size, an event after the last step's copies to the device: the host mirrors are
        # rewritten only once the copies out of them have run.
        self._copied: dict[int, torch.cuda.Event] = {}

    @staticmethod
    def unsupported(attn: Any, device: torch.device) -> str | None:
        """Why steps on ``device`` with attention backend ``attn`` cannot be captured (None:
        they can): the backend must write its plans into static buffers."""
        if device.type != "cuda":
            return f"device {device.type} (graphs are CUDA graphs)"
        triton = getattr(attn, "triton", None)
        if not hasattr(attn, "static_plan") or triton is None or not triton(device):
            return f"attention backend {attn.name!r} builds its plans per step"
        return None

    def size_for(self, table: TokenTable) -> int | None:
        """The capture size a step runs at: the smallest that holds it; None when none does
        (too many tokens, or a token tree)."""
        i = bisect.bisect_left(self.sizes, table.num_tokens)
        if i == len(self.sizes) or not self.steps[self.sizes[i]].fits(table):
            return None
        return self.sizes[i]

    def _plan(self, size: int, meta) -> Any:
        static = self.static_plans[size]
        if static is not None:
            return static.fill(meta)
        return self.attn.plan(meta, *self.heads)

    def _forward(self, size: int, attn_plan: Any) -> torch.Tensor:
        step = self.steps[size]
        ctx = StepContext(
            positions=step.positions,
            slot_mapping=step.slot_mapping,
            attn_backend=self.attn,
            attn_plan=attn_plan,
            gemm_backend=self.gemm,
            gemm_plan=self.gemm_plans[size],
        )
        return self.model.forward(step.ids, ctx, self.kv_caches, step.logit_rows)

    def run(self, size: int, lists: StepLists, table: TokenTable) -> torch.Tensor:
        """The logits ``[R, V]`` of the step's logit rows, on the model's device: the graph of
        ``size`` replayed, or (not captured) the forward run eagerly over the same buffers.
        A view of the graph's output, valid until the next step of this size runs."""
        done = self._copied.pop(size, None)
        if done is not None:
            done.synchronize()
        meta = self.steps[size].write(lists, table)
        plan = self._plan(size, meta)
        if self.model.device.type == "cuda":
            self._copied[size] = torch.cuda.Event()
            self._copied[size].record()
        graph = self.graphs.get(size)
        if graph is not None:
            graph.replay()
            logits = self.outputs[size]
        else:
            logits = self._forward(size, plan)
        return logits[: len(lists.logit_rows)]

    def capture(self, progress: bool = True) -> None:
        """Capture every size's forward in a CUDA graph, largest first, all in one memory pool
        (a smaller graph's intermediates fit in what the larger ones freed)."""
        from tqdm import tqdm

        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        sizes = sorted(self.sizes, reverse=True)
        for size in tqdm(sizes, desc="capture", disable=not progress, file=sys.stderr):
            plan = self._plan(size, self.steps[size].write_empty())
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self._forward(size, plan)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self._forward(size, plan)
            self.graphs[size] = graph
        torch.cuda.synchronize()
