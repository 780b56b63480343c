"""A step's inputs at a fixed, padded token count: the static buffers a captured graph reads.

A CUDA graph replays the launches it captured with the same pointers, grids and constexprs, so
every step replayed in the graph captured for ``size`` tokens reads its inputs from the same
tensors, of ``size`` rows: token ids, positions, cache slots, logit rows, and the attention
metadata (stage starts, key counts, block tables ``[size, max_blocks]``, where ``max_blocks``
covers the longest context the engine admits). ``write`` fills them from a step of at most
``size`` tokens in place. The padding is harmless by construction:

* padding tokens are token 0 at position 0 and belong to no stage; their K/V go to the scratch
  slot (the first slot of a cache block that no request owns), and attention gives them no key
  (no stage, no unit: their output rows are zero);
* padding stages (past the step's own) start and end at the step's last token and have no key;
* logit rows past the step's point at row 0 again; the caller keeps the step's rows only.

Every row of the flat batch is computed independently of the others outside attention (norms,
rotations, GEMMs act row by row), so the real rows' logits are those of the unpadded step, up
to the GEMM's choice of kernel for the padded row count (``tests/xyserve/test_step_graphs.py``).
Host values are written into host mirrors (pinned on CUDA) and travel in two asynchronous
copies, one per dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xyserve.engine.step_inputs import StepLists
from xyserve.plan.attention_metadata import AttentionMetadata
from xyserve.plan.token_table import TokenTable


@dataclass
class PaddedStep:
    size: int  # tokens (and at most as many stages) of the steps this buffer set takes
    max_blocks: int  # block-table width
    scratch_slot: int  # cache slot the padding tokens' K/V go to
    long_dev: torch.Tensor  # [4, size] int64: ids, positions, slots, logit rows
    int_dev: torch.Tensor  # [2 size + 1 + size * max_blocks] int32: starts, kv lens, tables
    long_host: torch.Tensor  # host mirrors (pinned on CUDA; the device tensors on CPU)
    int_host: torch.Tensor
    _rows_written: int = 0  # block-table rows the last step wrote

    @classmethod
    def allocate(
        cls, size: int, max_blocks: int, scratch_slot: int, device: torch.device
    ) -> PaddedStep:
        long_dev = torch.zeros((4, size), dtype=torch.long, device=device)
        int_dev = torch.zeros(2 * size + 1 + size * max_blocks, dtype=torch.int32, device=device)
        if device.type == "cuda":
            long_host = torch.zeros_like(long_dev, device="cpu").pin_memory()
            int_host = torch.zeros_like(int_dev, device="cpu").pin_memory()
        else:
            long_host, int_host = long_dev, int_dev
        step = cls(size, max_blocks, scratch_slot, long_dev, int_dev, long_host, int_host)
        step.write_empty()
        return step

    # Views of the device buffers: what the forward and the kernels read.
    @property
    def ids(self) -> torch.Tensor:
        return self.long_dev[0]

    @property
    def positions(self) -> torch.Tensor:
        return self.long_dev[1]

    @property
    def slot_mapping(self) -> torch.Tensor:
        return self.long_dev[2]

    @property
    def logit_rows(self) -> torch.Tensor:
        return self.long_dev[3]

    def _int_views(self, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.size
        return (
            buf[: s + 1],
            buf[s + 1 : 2 * s + 1],
            buf[2 * s + 1 :].view(s, self.max_blocks),
        )

    def fits(self, table: TokenTable) -> bool:
        """Whether ``table``'s step can be written here: at most ``size`` tokens and stages, no
        token tree, every block table within the width."""
        rows = table.rows
        return (
            0 < table.num_tokens <= self.size
            and len(rows) <= self.size
            and all(r.tree_mask is None and len(r.block_table) <= self.max_blocks for r in rows)
        )

    def meta(self, table: TokenTable) -> AttentionMetadata:
        """The attention metadata of ``table``'s step over the static buffers."""
        starts, kv_lens, tables = self._int_views(self.int_dev)
        return AttentionMetadata(
            table=table,
            slot_mapping=self.slot_mapping,
            query_start_loc=starts,
            kv_lens=kv_lens,
            block_tables=tables,
            tree_masks=[None] * len(table.rows),
        )

    def write_empty(self) -> AttentionMetadata:
        """A step of padding only (graph warm-up and capture)."""
        return self.write(StepLists([], [], [], {}), TokenTable())

    def write(self, lists: StepLists, table: TokenTable) -> AttentionMetadata:
        """Write a step (its host lists and token table) into the buffers; returns its
        metadata. The copies to the device are asynchronous (stream-ordered before the step's
        forward)."""
        if table.rows and not self.fits(table):
            raise ValueError(f"a step of {table.num_tokens} tokens does not fit size {self.size}")
        n, r = len(lists.ids), len(lists.logit_rows)
        longs = self.long_host.numpy()
        longs[0, :n] = lists.ids
        longs[1, :n] = lists.positions
        longs[2, :n] = table.slot_mapping()
        longs[3, :r] = lists.logit_rows
        longs[:2, n:] = 0
        longs[2, n:] = self.scratch_slot
        longs[3, r:] = 0
        starts, kv_lens, tables = (v.numpy() for v in self._int_views(self.int_host))
        rows = table.rows
        s = len(rows)
        starts[0] = 0
        starts[1 : s + 1] = [row.start + row.num_tokens for row in rows]
        starts[s + 1 :] = n
        kv_lens[:s] = [row.kv_len for row in rows]
        kv_lens[s:] = 0
        tables[: max(s, self._rows_written)] = 0  # rows past both steps' are zero already
        for i, row in enumerate(rows):
            tables[i, : len(row.block_table)] = row.block_table
        if self.long_host is not self.long_dev:
            self.long_dev.copy_(self.long_host, non_blocking=True)
            # The block tables travel up to the last row either step wrote: the rest is zero.
            end = 2 * self.size + 1 + max(s, self._rows_written) * self.max_blocks
            self.int_dev[:end].copy_(self.int_host[:end], non_blocking=True)
        self._rows_written = s
        return self.meta(table)
