"""The draft model's forward through one fused numba call (``kernels.cpu.fused_forward``).

:class:`FusedDraft` holds the draft's weights, packed once, and its own paged K/V cache (numpy
arrays indexed by the draft's :class:`KVCacheManager` block tables). With a token map (the
token ids it may propose, FR-Spec style: ``spec.token_map``) its lm_head keeps only their rows,
so that a pass reads fewer weights: the draft's vocabulary is reordered, those tokens first,
so the kernel's argmax (an index into the kept rows) is also the next pass's input id, and the
ids are mapped on the way in and out. A pass is a list of
requests' new rows: causal rows (a catch-up over accepted tokens, or one proposal token) and
token-tree rows (a node that sees the request's context and its own ancestors).
:func:`unsupported` says why a draft cannot take this path (it then runs through the engine's
``ModelRunner``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from xyserve.kernels.cpu import fused_forward as ff
from xyserve.kernels.cpu import fused_tree
from xyserve.model.llama import LlamaModel
from xyserve.spec.tree import TreeShape, max_candidates

# One thread: the draft's GEMVs are a few microseconds each, less than waking a second thread
# costs (docs/perf.md, "Fused draft forward and trees"; see the caveat there on the serial and
# parallel builds' shared numba cache before a8a5c9c).
PARALLEL = False


def unsupported(model: LlamaModel) -> str | None:
    """Why ``model`` cannot run fused (None: it can)."""
    if not ff.available():
        return "numba is not installed"
    if model.device.type != "cpu":
        return f"the draft runs on {model.device.type}, the fused forward on the CPU only"
    if model.dtype != torch.float32:
        return f"the draft runs in {model.dtype}, the fused forward in float32 only"
    return None


def pack_model(
    model: LlamaModel,
    compact: bool = True,
    width: int | None = None,
    amx_tiles: bool = False,
    order: np.ndarray | None = None,
    head_rows: int | None = None,
) -> ff.PackedWeights:
    """``model``'s weights for the fused call (``ff.pack``: ``compact`` keeps bfloat16 values as
    their bits; ``width``: the tile's vector width, the host's when None; ``amx_tiles``: AMX
    panels where the host and the model allow, for a bfloat16 engine). ``order``: the token
    ids in the order the packed vocabulary has them, of which the lm_head keeps the first
    ``head_rows`` (None: the model's order and every row)."""
    cfg = model.cfg
    embed, lm_head = model.embed, model.lm_head
    if order is not None:
        idx = torch.as_tensor(order, dtype=torch.long, device=embed.device)
        embed, lm_head = embed[idx], lm_head[idx[:head_rows]]
    layers = [
        {
            "input_norm": layer.input_norm,
            "post_norm": layer.post_norm,
            "qkv": layer.qkv,
            "qkv_bias": layer.qkv_bias,
            "o": layer.o,
            "o_bias": layer.o_bias,
            "gate_up": layer.gate_up,
            "down": layer.down,
            "q_norm": layer.qk_norm[0] if layer.qk_norm is not None else None,
            "k_norm": layer.qk_norm[1] if layer.qk_norm is not None else None,
        }
        for layer in model.layers
    ]
    return ff.pack(
        embed,
        lm_head,
        model.norm,
        layers,
        model.rope.cos,
        model.rope.sin,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.rms_norm_eps,
        compact,
        width,
        amx_tiles,
    )


@dataclass
class PassBuilder:
    """The rows of one fused pass, added request by request."""

    block_size: int
    ids: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    table_of: list[int] = field(default_factory=list)
    ctx_len: list[int] = field(default_factory=list)
    extra_off: list[int] = field(default_factory=lambda: [0])
    extra_slots: list[int] = field(default_factory=list)
    out_rows: list[int] = field(default_factory=list)
    tables: list[list[int]] = field(default_factory=list)

    def slot(self, table: list[int], position: int) -> int:
        return table[position // self.block_size] * self.block_size + position % self.block_size

    def add_table(self, table: list[int]) -> int:
        self.tables.append(table)
        return len(self.tables) - 1

    def causal(self, t: int, tokens: list[int], start: int) -> int:
        """Rows for ``tokens`` at positions ``start ..``, each seeing every earlier position of
        table ``t``. Returns the index (in the logits) of the last row's output."""
        table = self.tables[t]
        for i, tok in enumerate(tokens):
            p = start + i
            self._row(tok, p, self.slot(table, p), t, p + 1, ())
        self.out_rows.append(len(self.ids) - 1)
        return len(self.out_rows) - 1

    def node(self, t: int, tok: int, position: int, slot: int, ctx: int, ancestors) -> int:
        """A tree node: sees table ``t``'s positions below ``ctx`` and the ``ancestors`` slots
        (its own included). Returns its output index."""
        self._row(tok, position, slot, t, ctx, ancestors)
        self.out_rows.append(len(self.ids) - 1)
        return len(self.out_rows) - 1

    def _row(self, tok, p, slot, t, ctx, extra) -> None:
        self.ids.append(tok)
        self.pos.append(p)
        self.slots.append(slot)
        self.table_of.append(t)
        self.ctx_len.append(ctx)
        self.extra_slots.extend(extra)
        self.extra_off.append(len(self.extra_slots))

    def rows(self) -> ff.Rows:
        width = max((len(t) for t in self.tables), default=1) or 1
        tables = np.zeros((max(1, len(self.tables)), width), np.int64)
        for i, t in enumerate(self.tables):
            tables[i, : len(t)] = t

        def a(x: list[int]) -> np.ndarray:
            return np.asarray(x, dtype=np.int64)

        return ff.Rows(
            a(self.ids),
            a(self.pos),
            a(self.slots),
            a(self.table_of),
            tables,
            a(self.ctx_len),
            a(self.extra_off),
            a(self.extra_slots),
            a(self.out_rows),
        )


@dataclass
class TreeCandidates:
    """Per request (row ``i``), its first ``count[i]`` candidates in creation order."""

    tokens: np.ndarray
    parents: np.ndarray
    depth: np.ndarray
    score: np.ndarray
    count: np.ndarray


class FusedDraft:
    """The draft's packed weights and paged cache; one :meth:`run` per pass."""

    def __init__(
        self,
        model: LlamaModel,
        num_blocks: int,
        block_size: int,
        compact: bool = True,
        head_tokens: np.ndarray | None = None,
    ) -> None:
        """``head_tokens``: the token ids the draft may propose (module docstring), or None
        for every token. Their count is rounded up to the panel width with the tokens after
        them in the model's order (the compiled calls read the logits' width from the
        panels)."""
        vocab = model.cfg.vocab_size
        self.order: np.ndarray | None = None  # packed id -> token id
        self.packed_id: np.ndarray | None = None  # token id -> packed id
        self.map_size = vocab  # the token map's own count (head_rows rounds it up)
        head_rows = vocab
        if head_tokens is not None:
            head = np.asarray(head_tokens, dtype=np.int64)
            self.map_size = len(head)
            rest = np.setdiff1d(np.arange(vocab, dtype=np.int64), head, assume_unique=True)
            self.order = np.concatenate([head, rest])
            self.packed_id = np.argsort(self.order)
            panel = 2 * ff.vector_width()
            head_rows = min(vocab, -(-len(head) // panel) * panel)
        self.weights = pack_model(model, compact, order=self.order, head_rows=head_rows)
        self.block_size = block_size
        self.k_cache, self.v_cache = ff.new_cache(self.weights, num_blocks, block_size)
        self.warm_up()

    @property
    def head_rows(self) -> int:
        """The tokens the draft scores: the map's, rounded up to the panel width."""
        return self.weights.head_rows

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) every entry point now, so that the first
        proposal is not charged seconds of compilation (the adaptive model times proposals).
        It writes one row's K/V into slot 0, which any request writes before it reads."""
        b = self.builder()
        b.causal(b.add_table([0]), [0], 0)
        self.run(b)
        self.greedy_chains(b, np.ones(1, dtype=np.int64))
        self.greedy_tree(b, np.ones(1, dtype=np.int64), TreeShape((1,)))

    def builder(self) -> PassBuilder:
        return PassBuilder(self.block_size)

    def greedy_chains(self, b: PassBuilder, steps: np.ndarray) -> np.ndarray:
        """``steps[i]`` greedy tokens after each output row, in one call (see
        ``fused_forward.greedy_chains``)."""
        tokens = ff.greedy_chains(self.weights, self.k_cache, self.v_cache, self._rows(b), steps)
        return tokens if self.order is None else self.order[tokens]

    def greedy_tree(self, b: PassBuilder, levels: np.ndarray, shape: TreeShape) -> TreeCandidates:
        """Each output row's greedy tree of ``levels[i]`` levels, in one call (see
        ``fused_tree``): its candidates, for the caller to choose from."""
        capacity = max_candidates(shape.branching, shape.beam, int(levels.max(initial=1)))
        got = fused_tree.greedy_tree(
            self.weights, self.k_cache, self.v_cache, self._rows(b), levels, shape.branching,
            shape.beam, shape.nodes is not None, capacity,
        )  # fmt: skip
        tokens, *rest = got
        return TreeCandidates(tokens if self.order is None else self.order[tokens], *rest)

    def _rows(self, b: PassBuilder) -> ff.Rows:
        """``b``'s rows, their token ids in the packed vocabulary's order."""
        rows = b.rows()
        if self.packed_id is not None:
            rows.ids = self.packed_id[rows.ids]
        return rows

    def run(self, b: PassBuilder) -> tuple[torch.Tensor, list[int]]:
        """Logits [S, V] (a torch view of the kernel's array) and their argmax, one per
        output row in the order they were added."""
        logits, argmax = ff.forward(
            self.weights, self.k_cache, self.v_cache, self._rows(b), parallel=PARALLEL
        )
        if self.order is not None:  # the kept rows' scores; every other token cannot be drawn
            full = np.full((logits.shape[0], self.weights.vocab_size), -np.inf, np.float32)
            full[:, self.order[: self.head_rows]] = logits
            logits, argmax = full, self.order[argmax]
        return torch.from_numpy(logits), argmax.tolist()
