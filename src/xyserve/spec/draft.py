"""The ``draft_model`` method: a small model of the same vocabulary proposes ``k`` tokens.

The draft runs as a small engine of its own: its own paged KV cache (no prefix caching) and its
own model runner. It does not go through the scheduler: one propose call runs, for all
requests at once, a catch-up pass over the tokens the target accepted since the last call, then
``k - 1`` one-token passes, each a single batched forward. Each request's draft state is a
shadow :class:`Request` whose tokens are the target's tokens plus the draft's own proposals; at
the next call the shadow keeps the computed prefix it shares with the target's tokens (its K/V
stays valid), and the slots after it are recomputed, so rejected proposals leave no stale K/V.

Greedy requests get the draft's argmax (a deterministic proposal, verified as such). Sampled
requests get draws from the draft's distribution ``q`` under the request's temperature and
top-k/p/min-p, and ``q`` goes to rejection sampling (:meth:`probs`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request
from xyserve.engine.runner import ModelRunner
from xyserve.engine.sampler import filter_logits
from xyserve.engine.scheduler import ScheduledStage, SchedulerOutput
from xyserve.kernels.ops import greedy_ids
from xyserve.model.config import ModelConfig
from xyserve.model.loader import load_model
from xyserve.spec import draft_forward

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
        tree_width: int = 1,
        allow_tf32: bool = False,
    ) -> None:
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
        if why is None:
            self.fused = draft_forward.FusedDraft(self.model, num_blocks, block_size)
            log.info("draft %s: fused numba forward (one call per pass)", draft_path.name)
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
        self.tree_width = tree_width  # > 1: greedy requests get token trees (spec.tree)
        self.shadows: dict[str, Request] = {}
        self.generators: dict[str, torch.Generator | None] = {}
        self._probs: dict[str, torch.Tensor] = {}

    # ---- bookkeeping --------------------------------------------------------------------
    def release_except(self, live: set[str]) -> None:
        """Free the draft cache of requests that are no longer running (finished, preempted)."""
        for rid in [rid for rid in self.shadows if rid not in live]:
            self.kv.free(self.shadows.pop(rid))
            self.generators.pop(rid, None)
            self._probs.pop(rid, None)

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
            p = r.sampling_params
            seed = getattr(p, "seed", None)
            self.generators[r.request_id] = (
                torch.Generator().manual_seed(seed) if seed is not None else None
            )
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
        active: list[tuple[Request, Request]] = []
        for r in requests:
            cap = min(caps[r.request_id], self.max_len - r.num_tokens)
            if cap >= 1:
                active.append((r, self._sync(r)))
        out: dict[str, list[int]] = {r.request_id: [] for r, _ in active}
        qs: dict[str, list[torch.Tensor]] = {r.request_id: [] for r, _ in active}
        levels: dict[str, int] = {r.request_id: 0 for r, _ in active}
        for r, _ in active:
            p = r.sampling_params
            r.spec_tree_width = self.tree_width if p is None or p.greedy else 1
        while active:
            active, logits, argmax = self._pass(active)
            if not active:
                break
            for i, (r, s) in enumerate(active):
                s.num_computed_tokens = s.num_tokens
                p = r.sampling_params
                rid = r.request_id
                if r.spec_tree_width > 1:  # the level: top-width tokens, the best one extended
                    tok = argmax[i]
                    top = torch.topk(logits[i], r.spec_tree_width).indices.tolist()
                    others = [t for t in top if t != tok][: r.spec_tree_width - 1]
                    out[rid].extend([tok, *others])
                elif p is None or p.greedy:
                    tok = argmax[i]
                    out[rid].append(tok)
                else:
                    q = filter_logits(logits[i].clone(), p).softmax(-1)
                    tok = int(torch.multinomial(q, 1, generator=self.generators[rid]))
                    qs[rid].append(q)
                    out[rid].append(tok)
                s.output_token_ids.append(tok)
                levels[rid] += 1
            active = [(r, s) for r, s in active if levels[r.request_id] < caps[r.request_id]]
        for rid, q in qs.items():
            if q:
                self._probs[rid] = torch.stack(q)
        return {rid: toks for rid, toks in out.items() if toks}

    def _pass(
        self, active: list[tuple[Request, Request]]
    ) -> tuple[list[tuple[Request, Request]], torch.Tensor, list[int]]:
        """One draft forward over every shadow's uncomputed tokens: the requests that ran (a
        full draft cache ends a request's proposal), their last rows' logits and argmax."""
        ran = []
        for r, s in active:
            if self.kv.allocate(s, s.num_tokens - s.num_computed_tokens):
                ran.append((r, s))
        if not ran:
            return [], torch.empty(0), []
        if self.fused is not None:
            b = self.fused.builder()
            for _, s in ran:
                t = b.add_table(self.kv.block_table(s.request_id))
                b.causal(t, s.all_token_ids[s.num_computed_tokens :], s.num_computed_tokens)
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
