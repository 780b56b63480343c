"""A step's model inputs and plans, and their reuse from one decode step to the next.

At batch 1 a step of a small model costs about a millisecond, so rebuilding its token ids,
positions, attention metadata and plans from Python lists every step is a visible share of it.
When a step is the next of the same decode batch -- the same requests in the same order, one
new token each, every key count one more, no block copied -- ``advance`` patches the previous
step's tensors in place instead (the new token ids, positions + 1, key counts + 1, the new
cache slots, a block table column where a new block opened) and asks the attention backend to
patch its plan the same way. Anything else (a prefill, a verify, an admission, a finish, a
preemption, a block table that outgrows its padded width) builds afresh. Tests compare every
patched step with a fresh build of the same step (``tests/xyserve/test_plan_reuse.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from xyserve.engine.scheduler import SchedulerOutput, prompt_logit_positions
from xyserve.plan.attention_metadata import AttentionMetadata
from xyserve.plan.token_table import TokenTable
from xyserve.spec import tree


def tree_mask(st) -> tuple[tuple[bool, ...], ...] | None:
    """The tree mask of a verify stage whose proposals form a tree (None: causal)."""
    parents = st.request.spec_tree_parents
    if not st.num_spec_tokens or parents is None:
        return None
    return tree.stage_mask(st.num_tokens, st.num_spec_tokens, parents)


@dataclass
class StepLists:
    """A step's flat-batch inputs as host lists, before they become tensors (``StepInputs``) or
    are written into a padded step's static buffers (``engine.padded_step``)."""

    ids: list[int]  # token id of every new token, stage after stage
    positions: list[int]
    logit_rows: list[int]  # rows whose logits are sampled, then the prompt logprobs' rows
    rows: dict[str, slice]  # request id -> its rows in the logits
    # request id -> (the first position, its rows in the logits) of the prompt positions whose
    # logits its prompt logprobs read (``scheduler.prompt_logit_positions``), after every
    # sampled row
    prompt_rows: dict[str, tuple[int, slice]] = field(default_factory=dict)

    @classmethod
    def build(cls, out: SchedulerOutput, table: TokenTable) -> StepLists:
        ids: list[int] = []
        positions: list[int] = []
        logit_rows: list[int] = []
        rows: dict[str, slice] = {}
        wanted: list[tuple[str, range, int]] = []  # prompt logprobs' positions, rows after all
        for st, row in zip(out.stages, table.rows):
            r = st.request
            if r.prompt_logits and (at := prompt_logit_positions(st)):
                wanted.append((r.request_id, at, row.start))
            ids.extend(r.token_at(p) for p in range(st.context_len, st.kv_len))
            if tree_mask(st) is None:
                positions.extend(range(st.context_len, st.kv_len))
            else:  # spec: a tree's nodes sit at their depth
                parents = r.spec_tree_parents
                positions.extend(
                    tree.stage_positions(st.context_len, st.num_tokens, st.num_spec_tokens, parents)
                )
            if st.samples:
                first = len(logit_rows)
                end = row.start + row.num_tokens
                logit_rows.extend(range(end - 1 - st.num_spec_tokens, end))
                rows[r.request_id] = slice(first, len(logit_rows))
        prompt_rows: dict[str, tuple[int, slice]] = {}
        for rid, at, start in wanted:  # ``at``: the stage's first positions
            first = len(logit_rows)
            logit_rows.extend(range(start, start + len(at)))
            prompt_rows[rid] = (at.start, slice(first, len(logit_rows)))
        return cls(ids, positions, logit_rows, rows, prompt_rows)


@dataclass
class StepInputs:
    """What one forward pass reads besides the weights and the cache."""

    ids: torch.Tensor  # [T] long: the flat batch's token ids
    positions: torch.Tensor  # [T] long
    logit_rows: torch.Tensor  # [R] long: rows of the flat batch whose logits are sampled
    rows: dict[str, slice]  # request id -> its rows in the logits
    meta: AttentionMetadata  # token table, cache slots, key counts, block tables
    attn_plan: Any  # the attention backend's plan of ``meta``
    gemm_plan: Any  # the GEMM backend's plan of T rows
    prompt_rows: dict[str, tuple[int, slice]] = field(default_factory=dict)  # StepLists'

    def advance(
        self,
        out: SchedulerOutput,
        table: TokenTable,
        plan_attention: Callable[[Any, AttentionMetadata], Any],
    ) -> StepInputs | None:
        """The inputs of ``out`` (whose token table is ``table``), patched from these in place
        when ``out`` is the next decode step of the same batch; None otherwise. These inputs
        describe ``out`` afterwards: call it once their step has run.
        ``plan_attention(old_plan, meta)`` gives the attention plan of the patched metadata."""
        stages = out.stages
        if self.ids.device.type != "cpu" or len(stages) != len(self.rows):
            return None
        for i, st in enumerate(stages):
            if st.num_spec_tokens or not st.samples or st.num_tokens != 1:
                return None
            if self.rows.get(st.request.request_id) != slice(i, i + 1):
                return None
        meta = self.meta.advanced(table)  # checks the rest: same order, +1 key, block tables
        if meta is None:
            return None
        ids = self.ids.numpy()
        for i, st in enumerate(stages):
            ids[i] = st.request.token_at(st.kv_len - 1)
        self.positions.add_(1)
        return StepInputs(
            ids=self.ids,
            positions=self.positions,
            logit_rows=self.logit_rows,
            rows=self.rows,
            meta=meta,
            attn_plan=plan_attention(self.attn_plan, meta),
            gemm_plan=self.gemm_plan,
        )
