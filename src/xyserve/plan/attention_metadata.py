"""Torch-side attention metadata of a step, built once from the token table and used by every layer.

Cache layout, shared by every backend: ``k_cache``/``v_cache`` are
``[num_blocks, block_size, num_kv_heads, head_dim]``. The new tokens' K/V are written into the
cache (through ``slot_mapping``) before attention runs, so attention reads all keys of a stage,
history and new, from the paged cache through its block table.

Masking rule of a stage with ``n`` new tokens and ``kv_len`` keys: query ``i`` (0-based within the
stage) sees every history key ``[0, kv_len - n)`` and the new keys ``j <= i`` (causal), or the new
keys that ``tree_masks[row][i, j]`` allows when the stage carries a tree mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xyserve.plan.token_table import TokenTable


@dataclass
class AttentionMetadata:
    table: TokenTable  # host-side rows (start, num_tokens, kv_len, tile size, block table)
    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token
    query_start_loc: torch.Tensor  # [S + 1] int32, on device
    kv_lens: torch.Tensor  # [S] int32, on device
    block_tables: torch.Tensor  # [S, max_blocks] int32, padded with 0, on device
    tree_masks: list[torch.Tensor | None]  # per stage: bool [n, n] or None (causal)

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.numel())

    def advanced(self, table: TokenTable) -> AttentionMetadata | None:
        """The metadata of ``table``, patched from this step's, when ``table`` is the next step
        of the same decode batch: the same stages in the same order, one new token each, every
        key count one more and every block table this step's, or it plus one block that fits
        the padded width. None otherwise (the caller builds afresh).

        CPU tensors only. They are updated in place, so this step's metadata (and any plan that
        holds it) describes the next step from then on: call it once this step has run.
        """
        old = self.table.rows
        new = table.rows
        if len(new) != len(old) or self.slot_mapping.device.type != "cpu":
            return None
        width = self.block_tables.shape[1]
        grown: list[tuple[int, int, int]] = []  # (stage, column, block)
        for i, (a, b) in enumerate(zip(old, new)):
            if not (
                a.num_tokens == b.num_tokens == 1
                and b.request_id == a.request_id
                and b.kv_len == a.kv_len + 1
                and b.tree_mask is None
            ):
                return None
            if b.block_table != a.block_table:
                n = len(a.block_table)
                if (
                    len(b.block_table) != n + 1
                    or n + 1 > width
                    or b.block_table[:n] != a.block_table
                ):
                    return None
                grown.append((i, n, b.block_table[n]))
        bs = table.block_size
        bt = self.block_tables.numpy()
        for i, col, block in grown:
            bt[i, col] = block
        self.kv_lens.add_(1)
        slots = self.slot_mapping.numpy()
        for i, r in enumerate(new):
            pos = r.kv_len - 1
            slots[i] = r.block_table[pos // bs] * bs + pos % bs
        return AttentionMetadata(
            table=table,
            slot_mapping=self.slot_mapping,
            query_start_loc=self.query_start_loc,
            kv_lens=self.kv_lens,
            block_tables=self.block_tables,
            tree_masks=self.tree_masks,
        )

    @classmethod
    def build(cls, table: TokenTable, device: torch.device | str = "cpu") -> AttentionMetadata:
        rows = table.rows
        starts = [0]
        for r in rows:
            starts.append(starts[-1] + r.num_tokens)
        max_blocks = max((len(r.block_table) for r in rows), default=0)
        bt = torch.zeros((len(rows), max(max_blocks, 1)), dtype=torch.int32)
        for i, r in enumerate(rows):
            if r.block_table:
                bt[i, : len(r.block_table)] = torch.tensor(r.block_table, dtype=torch.int32)
        masks = [
            None
            if r.tree_mask is None
            else torch.tensor(r.tree_mask, dtype=torch.bool, device=device)
            for r in rows
        ]
        return cls(
            table=table,
            slot_mapping=torch.tensor(table.slot_mapping(), dtype=torch.int64, device=device),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
            kv_lens=torch.tensor([r.kv_len for r in rows], dtype=torch.int32, device=device),
            block_tables=bt.to(device),
            tree_masks=masks,
        )
