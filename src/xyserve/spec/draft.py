"""The ``draft_model`` method: a small model of the same vocabulary proposes ``k`` tokens.

The draft runs as a small engine of its own: its own paged KV cache (no prefix caching) and its
own model runner. It does not go through the scheduler: one propose call runs, for all
requests at once, a catch-up pass over the tokens the target accepted since the last call, then
``k - 1`` one-token passes, each a single batched forward. Each request's draft state is a
shadow :class:`Request` whose tokens are the target's tokens plus the draft's own proposals; at
the next call the shadow keeps the computed prefix it shares with the target's tokens (its K/V
stays valid), and the slots after it are recomputed, so rejected proposals leave no stale K/V.

Greedy requests get the draft's argmax (a deterministic proposal, verified as such), and so do
seeded sampled requests: a deterministic proposal is verified by the target's own draw, one a
position from the request's generator as without speculation (``spec.verify``), so a seeded
output does not depend on how many tokens were proposed, which the adaptive controller, the
batch and the token budget decide. Unseeded sampled requests get draws from the draft's
distribution ``q`` under the request's temperature and top-k/p/min-p, and ``q`` goes to
rejection sampling (:meth:`probs`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request
from xyserve.engine.runner import ModelRunner
from xyserve.engine.sampler import filter_logits
from xyserve.engine.scheduler import ScheduledStage, SchedulerOutput
from xyserve.kernels.cpu import fused_tree
from xyserve.kernels.ops import greedy_ids
from xyserve.model.config import ModelConfig
from xyserve.model.loader import load_model
from xyserve.spec import draft_forward, tree
from xyserve.spec.token_map import FILE_NAME as TOKEN_MAP_FILE
from xyserve.spec.token_map import load_token_map

log = logging.getLogger(__name__)


def resolve_draft_path(model: str | None, target_path: Path) -> Path:
    """The draft directory: as given, or the bundled draft when the target is bundled xy-tiny."""
    from xyserve.models import DEFAULT_DRAFT_MODEL, DEFAULT_MODEL, resolve_model

    if model is None:
        if Path(target_path).resolve() != resolve_model(DEFAULT_MODEL).resolve():
            raise ValueError(
                "speculative_config: 'model' (the draft) is required unless the target is the "
                f"bundled {DEFAULT_MODEL!r}"
            )
        model = DEFAULT_DRAFT_MODEL
    return Path(resolve_model(model))


class DraftModelProposer:
    def __init__(
        self,
        draft_path: Path,
        target_cfg: ModelConfig,
        device: torch.device,
        dtype: torch.dtype,
        num_blocks: int,
        block_size: int,
        attention_backend: str,
        gemm_backend: str,
        tree_shape: tree.TreeShape | None = None,
        allow_tf32: bool = False,
        token_map: str | bool | None = None,
    ) -> None:
        """``token_map``: ``SpeculativeConfig.draft_token_map`` (a file, False, or None for
        the draft directory's own map where it has one)."""
        cfg = ModelConfig.from_dir(draft_path)
        if cfg.vocab_size != target_cfg.vocab_size:
            raise ValueError(
                f"speculative_config: the draft {str(draft_path)!r} has a vocabulary of "
                f"{cfg.vocab_size} tokens, the target {target_cfg.vocab_size}: they must match"
            )
        self.max_len = cfg.max_position_embeddings
        self.model = load_model(draft_path, device, dtype)
        self.kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)
        why = draft_forward.unsupported(self.model)
        self.fused: draft_forward.FusedDraft | None = None
        self.runner: ModelRunner | None = None
        if token_map and why is not None:  # the map lives in the fused call's packed head
            raise ValueError(
                f"speculative_config: draft_token_map {token_map!r} needs the fused draft "
                f"forward, a float32 draft on the CPU ({why}); give draft_token_map false"
            )
        own_map = Path(draft_path) / TOKEN_MAP_FILE
        if token_map is None and own_map.is_file() and why is None:
            token_map = str(own_map)
        self.token_map = token_map or None  # the map file in use
        if why is None:
            head = load_token_map(token_map, cfg.vocab_size) if token_map else None
            self.fused = draft_forward.FusedDraft(
                self.model, num_blocks, block_size, head_tokens=head
            )
            log.info(
                "draft %s: fused numba forward (one call per pass), %s",
                draft_path.name,
                "every token" if head is None else f"{self.fused.head_rows} tokens ({token_map})",
            )
        else:
            log.info("draft %s: the engine's model runner (%s)", draft_path.name, why)
            gemm_kwargs = {}
            if gemm_backend == "smooth":  # a table applies only at the precision the draft runs at
                gemm_kwargs = {
                    "model_path": str(draft_path),
                    "device": device.type,
                    "dtype": str(dtype).removeprefix("torch."),
                    "allow_tf32": allow_tf32,
                }
            self.runner = ModelRunner(
                self.model,
                num_blocks,
                block_size,
                attention_backend,
                gemm_backend,
                gemm_kwargs,
                allow_tf32=allow_tf32,
            )
        # Greedy requests get token trees of this shape (spec.tree), to their cap; None: chains.
        self.tree_shape = tree_shape
        # All-greedy chain batches on the fused path: every pass in one call (False: the
        # pass-by-pass loop, which gives the same tokens; it serves sampled requests).
        self.chains_in_one_call = self.fused is not None and tree_shape is None
        # Greedy requests' trees likewise, every level in one call (False: the loop).
        self.trees_in_one_call = self.fused is not None
        if tree_shape is not None and self.fused is None:
            raise ValueError(
                "speculative_config: method 'tree' needs the fused draft forward, a float32 "
                f"draft on the CPU ({why}); use method 'draft_model'"
            )
        self.shadows: dict[str, Request] = {}
        self._probs: dict[str, torch.Tensor] = {}

    # ---- bookkeeping --------------------------------------------------------------------
    def release_except(self, live: set[str]) -> None:
        """Free the draft cache of requests that are no longer running (finished, preempted)."""
        for rid in [rid for rid in self.shadows if rid not in live]:
            self.kv.free(self.shadows.pop(rid))
            self._probs.pop(rid, None)

    def catch_up_rows(self, r: Request) -> int:
        """Rows the first pass of ``r``'s next proposal runs: the tokens its draft cache lacks
        (every token of a request it has not proposed for). From the computed count: it
        leaves out positions a rejected proposal left with other tokens (``_sync`` redoes
        those), fewer than a proposal's length."""
        s = self.shadows.get(r.request_id)
        return r.num_tokens - (0 if s is None else min(s.num_computed_tokens, r.num_tokens - 1))

    def probs(self, request_id: str, n: int) -> torch.Tensor | None:
        """The draft's distributions of the first ``n`` proposals (sampled requests only)."""
        q = self._probs.pop(request_id, None)
        return None if q is None else q[:n]

    def _sync(self, r: Request) -> Request:
        """The shadow of ``r``: target tokens, computed prefix kept where it still agrees."""
        tokens = r.all_token_ids
        s = self.shadows.get(r.request_id)
        if s is None:
            s = Request(r.request_id, tokens, max_tokens=1)
            self.shadows[r.request_id] = s
            return s
        old = s.all_token_ids
        keep = min(s.num_computed_tokens, len(tokens) - 1)
        i = 0
        while i < keep and old[i] == tokens[i]:
            i += 1
        s.prompt_token_ids, s.output_token_ids = tokens, []
        s.num_computed_tokens = i
        return s

    # ---- proposing ----------------------------------------------------------------------
    def propose(self, requests: list[Request], caps: dict[str, int]) -> dict[str, list[int]]:
        """Up to ``caps[id]`` levels of proposals per request: a chain (one token a level), or
        for greedy requests with a tree configured the tree's nodes in node order (and
        ``spec_tree_parents`` set). Every draft pass runs the level's rows of all requests."""
        active: list[tuple[Request, Request]] = []
        for r in requests:
            cap = min(caps[r.request_id], self.max_len - r.num_tokens)
            if cap >= 1:
                active.append((r, self._sync(r)))
        if self.chains_in_one_call and all(_argmax_proposal(r) for r, _ in active):
            return self._greedy_chains(active, caps)
        out: dict[str, list[int]] = {}
        if self.tree_shape is not None and self.trees_in_one_call:
            growing = [(r, s) for r, s in active if _greedy(r)]
            active = [(r, s) for r, s in active if not _greedy(r)]
            if growing:
                out.update(self._greedy_trees(growing, caps))
        out.update({r.request_id: [] for r, _ in active})
        qs: dict[str, list[torch.Tensor]] = {r.request_id: [] for r, _ in active}
        levels: dict[str, int] = {r.request_id: 0 for r, _ in active}
        trees: dict[str, _TreeState] = {}
        for r, s in active:
            if self.tree_shape is not None and _greedy(r):
                cap = min(caps[r.request_id], self.max_len - r.num_tokens)
                trees[r.request_id] = _TreeState(self.tree_shape, cap, s.num_tokens)
        while active:
            active, logits, argmax = self._pass(active, trees)
            i = 0
            for r, s in active:
                rid = r.request_id
                levels[rid] += 1
                t = trees.get(rid)
                if t is not None:  # one output per frontier node: its children
                    for node in t.frontier:
                        t.expand(node, logits[i], argmax[i])
                        i += 1
                    s.num_computed_tokens = s.num_tokens  # node K/V is scratch, never kept
                    t.frontier = t.next_frontier(levels[rid])
                    continue
                s.num_computed_tokens = s.num_tokens
                p = r.sampling_params
                if _argmax_proposal(r):
                    tok = argmax[i]
                else:
                    q = filter_logits(logits[i].clone(), p).softmax(-1)
                    # unseeded (seeded requests are proposed the argmax): the global generator,
                    # as the target's draws for the request
                    tok = int(torch.multinomial(q, 1))
                    qs[rid].append(q)
                out[rid].append(tok)
                s.output_token_ids.append(tok)
                i += 1
            active = [
                (r, s)
                for r, s in active
                if levels[r.request_id] < caps[r.request_id]
                and (r.request_id not in trees or trees[r.request_id].frontier)
            ]
        for rid, q in qs.items():
            if q:
                self._probs[rid] = torch.stack(q)
        for r in requests:
            t = trees.get(r.request_id)
            if t is not None and t.tokens:  # (it ran: its catch-up rows are computed)
                _keep_run_chain(self.shadows[r.request_id], t)
                out[r.request_id], r.spec_tree_parents = t.result()
        return {rid: toks for rid, toks in out.items() if toks}

    def _catch_up(
        self, active: list[tuple[Request, Request]], size
    ) -> tuple[list[tuple[Request, Request]], list[int], draft_forward.PassBuilder]:
        """The requests whose draft cache takes their uncomputed tokens plus the slots that
        their proposal runs (``size(r)``: (levels, slots beyond the tokens)); a full cache
        leaves a request out of this proposal. Returns them, their levels, and the pass of
        their catch-up rows, one output row each."""
        ran, levels = [], []
        for r, s in active:
            n, slots = size(r)
            if self.kv.allocate(s, s.num_tokens - s.num_computed_tokens + slots):
                ran.append((r, s))
                levels.append(n)
        b = self.fused.builder()
        for _, s in ran:
            t = b.add_table(self.kv.block_table(s.request_id))
            b.causal(t, s.all_token_ids[s.num_computed_tokens :], s.num_computed_tokens)
        return ran, levels, b

    def _greedy_chains(
        self, active: list[tuple[Request, Request]], caps: dict[str, int]
    ) -> dict[str, list[int]]:
        """Greedy chains of every request in one fused call (no Python between the passes):
        the same tokens and draft cache state as the pass-by-pass loop."""

        def size(r: Request) -> tuple[int, int]:  # the last proposal does not run
            n = min(caps[r.request_id], self.max_len - r.num_tokens)
            return n, n - 1

        ran, steps, b = self._catch_up(active, size)
        if not ran:
            return {}
        tokens = self.fused.greedy_chains(b, np.asarray(steps, dtype=np.int64))
        out = {}
        for (r, s), n, toks in zip(ran, steps, tokens.tolist()):
            out[r.request_id] = toks[:n]
            _keep_chain(s, toks[:n])
        return out

    def _greedy_trees(
        self, active: list[tuple[Request, Request]], caps: dict[str, int]
    ) -> dict[str, list[int]]:
        """Greedy requests' trees in one fused call (``kernels.cpu.fused_tree``): the same
        candidates and draft cache state as the pass-by-pass loop. Sets each request's
        ``spec_tree_parents``."""
        shape = self.tree_shape

        def size(r: Request) -> tuple[int, int]:
            n = min(caps[r.request_id], self.max_len - r.num_tokens, len(shape.branching))
            return n, fused_tree.max_runs(shape.branching, shape.beam, n)

        ran, levels, b = self._catch_up(active, size)
        if not ran:
            return {}
        got = self.fused.greedy_tree(b, np.asarray(levels, dtype=np.int64), shape)
        out = {}
        for i, ((r, s), n) in enumerate(zip(ran, levels)):
            t = _TreeState(shape, n, s.num_tokens)
            c = int(got.count[i])
            t.tokens = got.tokens[i, :c].tolist()
            t.parents = got.parents[i, :c].tolist()
            t.depth = got.depth[i, :c].tolist()
            t.score = got.score[i, :c].tolist()
            _keep_run_chain(s, t)
            if t.tokens:
                out[r.request_id], r.spec_tree_parents = t.result()
        return out

    def _pass(
        self, active: list[tuple[Request, Request]], trees: dict[str, _TreeState]
    ) -> tuple[list[tuple[Request, Request]], torch.Tensor, list[int]]:
        """One draft forward: every shadow's uncomputed tokens (its last row's output), or a
        tree's frontier nodes (one output each). Returns the requests that ran (a full draft
        cache ends a request's proposal), the outputs' logits and argmax, in that order."""
        ran = []
        for r, s in active:
            n = s.num_tokens - s.num_computed_tokens
            t = trees.get(r.request_id)
            if t is not None and t.frontier == [-1]:  # first pass: room for the nodes too
                n += t.max_runs()
            if self.kv.allocate(s, n):
                ran.append((r, s))
        if not ran:
            return [], torch.empty(0), []
        if self.fused is not None:
            b = self.fused.builder()
            for r, s in ran:
                tb = b.add_table(self.kv.block_table(s.request_id))
                t = trees.get(r.request_id)
                if t is None or t.frontier == [-1]:
                    b.causal(tb, s.all_token_ids[s.num_computed_tokens :], s.num_computed_tokens)
                    continue
                table = b.tables[tb]
                for node in t.frontier:
                    t.run_slot[node] = len(t.run_slot)
                    anc = tree.ancestors(node, tuple(t.parents))
                    slots = [b.slot(table, t.base + t.run_slot[a]) for a in anc]
                    pos = t.base + t.depth[node]
                    b.node(tb, t.tokens[node], pos, slots[-1], t.base, slots)
            logits, argmax = self.fused.run(b)
            return ran, logits, argmax
        stages = [
            ScheduledStage(s, s.num_tokens - s.num_computed_tokens, 0, s.num_computed_tokens)
            for _, s in ran
        ]
        tables = {s.request_id: self.kv.block_table(s.request_id) for _, s in ran}
        res = self.runner.execute(SchedulerOutput(stages=stages), tables)
        rows = [res.rows[r.request_id].start for r, _ in ran]
        logits = res.logits[rows] if rows != list(range(res.logits.shape[0])) else res.logits
        return ran, logits, greedy_ids(logits)


class _TreeState:
    """One request's token tree while it is proposed, level by level (see
    :class:`xyserve.spec.tree.TreeShape`): candidates in creation order (parents first), the
    frontier that the next pass runs, and each run node's scratch K/V slot (the slot of
    position ``base + run index`` in the request's draft table)."""

    def __init__(self, shape: tree.TreeShape, cap: int, base: int) -> None:
        self.shape = shape
        self.levels = min(cap, len(shape.branching))
        self.base = base
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depth: list[int] = []
        self.score: list[float] = []  # log-probability of the path (dynamic trees only)
        self.frontier: list[int] = [-1]  # -1: the root (the catch-up pass's last row)
        self.run_slot: dict[int, int] = {}

    def run_chain(self) -> list[int]:
        """The top chain's tokens (the first candidate of each level, ``tree.top_chain``) where
        the draft ran that chain at its own positions: a dynamic tree of beam 1 expands one
        node a level, its parent's top child, and runs it as the ``r``-th node at position
        ``base + r``, so the K/V of every chain node but the last is a chain's. Empty for
        other trees (their run order is not their positions)."""
        if self.shape.nodes is None or self.shape.beam != 1:
            return []
        first: dict[int, int] = {}
        for i, d in enumerate(self.depth):
            first.setdefault(d, i)
        return [self.tokens[first[d]] for d in range(len(first))]

    def max_runs(self) -> int:
        """Nodes that may run through the draft: the slots to allocate."""
        return fused_tree.max_runs(self.shape.branching, self.shape.beam, self.levels)

    def expand(self, node: int, logits: torch.Tensor, argmax: int) -> None:
        """Add ``node``'s children: the draft's top-b tokens after it (ties: the lower id),
        ranked as the one-call kernel ranks them."""
        level = 0 if node < 0 else self.depth[node] + 1
        b = self.shape.branching[level]
        base_score = 0.0 if node < 0 else self.score[node]
        row = logits.numpy()
        idx = np.empty(b, np.int64)
        vals = np.zeros(b, np.float64)
        if b == 1 and self.shape.nodes is None:  # static: ranks only
            idx[0] = argmax
        else:
            fused_tree.top_b_c(row, b, idx)
        if self.shape.nodes is not None:
            fused_tree.log_softmax_at_c(row, idx, b, vals)
        toks, vals = idx.tolist(), vals.tolist()
        for tok, val in zip(toks, vals):
            self.tokens.append(tok)
            self.parents.append(node)
            self.depth.append(level)
            self.score.append(base_score + val)

    def next_frontier(self, passes: int) -> list[int]:
        """The nodes the next pass runs (after ``passes`` passes): the newest level's, or its
        ``beam`` most likely; none once the tree has its levels."""
        if passes >= self.levels:
            return []
        newest = [i for i, d in enumerate(self.depth) if d == passes - 1]
        if self.shape.beam is not None:
            newest = sorted(sorted(newest, key=lambda i: -self.score[i])[: self.shape.beam])
        return newest

    def result(self) -> tuple[list[int], tuple[int, ...]]:
        """The proposed tokens and their parent array: every candidate (static), or the
        ``nodes`` most likely with their ancestors (dynamic), by depth then creation order."""
        keep = range(len(self.tokens))
        if self.shape.nodes is not None:
            best = sorted(keep, key=lambda i: (-self.score[i], self.depth[i], i))
            chosen: set[int] = set()
            for i in best:
                path = tree.ancestors(i, tuple(self.parents))
                if len(chosen | set(path)) > self.shape.nodes:
                    continue
                chosen.update(path)
            keep = sorted(chosen, key=lambda i: (self.depth[i], i))
        index = {old: new for new, old in enumerate(keep)}
        parents = tuple(-1 if self.parents[i] < 0 else index[self.parents[i]] for i in keep)
        return [self.tokens[i] for i in keep], parents


def _keep_chain(s: Request, tokens: list[int]) -> None:
    """The shadow ``s`` takes a proposed chain whose K/V the draft computed for every token but
    the last (not run): the next catch-up pass starts after the chain's accepted part."""
    s.output_token_ids.extend(tokens)
    s.num_computed_tokens = s.num_tokens - 1


def _keep_run_chain(s: Request, t: _TreeState) -> None:
    """After a tree proposal: the shadow ``s`` keeps the tree's run chain as a chain proposal
    keeps its own, or else its real tokens alone (node K/V is scratch)."""
    chain = t.run_chain()
    if chain:
        _keep_chain(s, chain)
    else:
        s.num_computed_tokens = s.num_tokens


def _greedy(r: Request) -> bool:
    p = r.sampling_params
    return p is None or p.greedy


def _argmax_proposal(r: Request) -> bool:
    """Whether ``r`` is proposed the draft's argmax (greedy, or seeded: see the module
    docstring) rather than a draw from the draft's distribution."""
    return _greedy(r) or r.seed is not None
