"""LLMEngine.step(): schedule -> plan -> execute -> sample -> update -> detokenize/stop."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from xyserve.config import EngineConfig
from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request, RequestStatus
from xyserve.engine.runner import ModelRunner
from xyserve.engine.sampler import SampleRow, sample
from xyserve.engine.scheduler import Scheduler
from xyserve.model.loader import load_model, resolve_device, resolve_dtype
from xyserve.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from xyserve.sampling_params import SamplingParams

log = logging.getLogger("xyserve")


def resolve_model_path(name: str | None) -> Path:
    """A local directory, or a bundled model name (None: the bundled default)."""
    try:
        from xyserve.models import resolve_model
    except ImportError:  # bundled models not present
        if name is None:
            raise ValueError("no model given and no bundled default model is installed") from None
        p = Path(name)
        if not p.is_dir():
            raise FileNotFoundError(f"model directory not found: {p}") from None
        return p
    return Path(resolve_model(name))


class PromptTooLongError(ValueError):
    pass


@dataclass
class _Child:
    """One of the ``n`` sequences of a request: its detokenized text and logprobs."""

    request: Request
    index: int
    generator: torch.Generator | None
    text: str = ""
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None


@dataclass
class _Group:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[_Child] = field(default_factory=list)
    metrics: RequestMetrics | None = None

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.children)


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_path = resolve_model_path(config.model)
        self.model_name = config.served_model_name or (config.model or self.model_path.name)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        torch.manual_seed(config.seed)
        self.model = load_model(self.model_path, self.device, self.dtype)
        mcfg = self.model.cfg
        self.tokenizer = None
        if not config.skip_tokenizer_init:
            from xyserve.tokenizer import Tokenizer

            self.tokenizer = Tokenizer(config.tokenizer or self.model_path)
        self.eos_token_ids = set(mcfg.eos_token_ids)
        if not self.eos_token_ids and self.tokenizer and self.tokenizer.eos_token_id is not None:
            self.eos_token_ids = {self.tokenizer.eos_token_id}
        self.max_model_len = config.max_model_len or mcfg.max_position_embeddings
        if self.max_model_len > mcfg.max_position_embeddings:
            raise ValueError(
                f"max_model_len={self.max_model_len} exceeds the model's "
                f"max_position_embeddings={mcfg.max_position_embeddings}"
            )
        bs = config.block_size
        if config.num_kv_blocks is not None:
            num_blocks = config.num_kv_blocks
        else:
            per_block = ModelRunner.bytes_per_block(mcfg, bs, self.dtype)
            want = 2 * config.max_num_seqs * -(-self.max_model_len // bs)
            num_blocks = max(1, min(config.kv_cache_memory_bytes // per_block, want))
        self.kv = KVCacheManager(num_blocks, bs, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.kv,
            config.max_num_batched_tokens,
            config.max_num_seqs,
            self.max_model_len,
            policy=config.scheduler_policy,
            num_reserved_decode_tokens=config.num_reserved_decode_tokens,
        )
        gemm_kwargs = {}
        if config.gemm_backend == "smooth":  # its tuned table lives beside the model or in a cache
            gemm_kwargs = {"model_path": str(self.model_path), "device": self.device.type}
        self.runner = ModelRunner(
            self.model,
            num_blocks,
            bs,
            config.attention_backend,
            config.gemm_backend,
            gemm_kwargs,
            allow_tf32=config.allow_tf32,
        )
        self.groups: dict[str, _Group] = {}
        self._child_to_group: dict[str, tuple[_Group, _Child]] = {}
        self._ids = itertools.count()
        self.first_logits: dict[str, torch.Tensor] | None = None  # tests: set to {} to record
        self.num_steps = 0
        self.num_prompt_tokens = 0  # prompt tokens of admitted requests, as vLLM counts
        self.num_computed_prefill_tokens = 0  # prefill actually run (cache hits excluded)
        self.num_generation_tokens = 0

    # ---- requests ---------------------------------------------------------------------
    def tokenize(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("text prompts need a tokenizer (skip_tokenizer_init is set)")
        return self.tokenizer.encode(prompt)

    def add_request(
        self,
        prompt: str | list[int] | dict,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        arrival_time: float | None = None,
    ) -> str:
        params = params or SamplingParams()
        text: str | None = None
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = list(prompt["prompt_token_ids"])
            else:
                text = prompt["prompt"]
                ids = self.tokenize(text)
        elif isinstance(prompt, str):
            text, ids = prompt, self.tokenize(prompt)
        else:
            ids = list(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        vocab = self.model.cfg.vocab_size
        if any(not (0 <= t < vocab) for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = self.max_model_len - len(ids)
        if len(ids) + max_tokens > self.max_model_len or max_tokens < 1:
            raise PromptTooLongError(
                f"this model's maximum context length is {self.max_model_len} tokens; the prompt "
                f"has {len(ids)} tokens and max_tokens is {max_tokens}"
            )
        rid = request_id if request_id is not None else str(next(self._ids))
        if rid in self.groups:
            raise ValueError(f"duplicate request id {rid!r}")
        now = arrival_time if arrival_time is not None else time.monotonic()
        group = _Group(rid, text, ids, params, metrics=RequestMetrics(arrival_time=now))
        for i in range(params.n):
            child_id = rid if params.n == 1 else f"{rid}#{i}"
            gen = None
            if params.seed is not None:
                gen = torch.Generator().manual_seed(params.seed + i)
            req = Request(child_id, list(ids), max_tokens, now, params)
            child = _Child(req, i, gen, logprobs=[] if params.logprobs is not None else None)
            group.children.append(child)
            self._child_to_group[child_id] = (group, child)
            self.scheduler.add_request(req)
        self.groups[rid] = group
        self.num_prompt_tokens += len(ids)
        return rid

    def abort_request(self, request_id: str) -> None:
        group = self.groups.pop(request_id, None)
        if group is None:
            return
        for c in group.children:
            self.scheduler.finish_request(c.request.request_id, RequestStatus.FINISHED_ABORTED)
            self._child_to_group.pop(c.request.request_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.groups)

    # ---- the step ---------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        self.num_steps += 1
        now = time.monotonic()
        block_tables = {
            s.request.request_id: self.kv.block_table(s.request.request_id) for s in out.stages
        }
        result = self.runner.execute(out, block_tables)
        sampled: dict[str, list[int]] = {}
        touched: dict[str, _Group] = {}
        rows, sample_rows, children = [], [], []
        for st in out.stages:
            rid = st.request.request_id
            group, child = self._child_to_group[rid]
            if group.metrics.first_scheduled_time is None:
                group.metrics.first_scheduled_time = now
                group.metrics.num_cached_tokens = max(0, st.request.num_cached_tokens)
            if rid not in result.rows:
                continue
            r = st.request
            blocked = []
            if len(r.output_token_ids) < group.params.min_tokens:
                blocked = sorted(self.eos_token_ids | set(group.params.stop_token_ids))
            rows.append(result.rows[rid].stop - 1)
            sample_rows.append(
                SampleRow(
                    group.params, r.prompt_token_ids, r.output_token_ids, child.generator, blocked
                )
            )
            children.append((group, child))
        if rows:
            logits = result.logits
            if rows != list(range(logits.shape[0])):  # a copy of [R, V] only when rows differ
                logits = logits[rows]
            if self.first_logits is not None:
                for (_, child), lg in zip(children, logits):
                    self.first_logits.setdefault(child.request.request_id, lg.clone())
            for (_, child), res in zip(children, sample(logits, sample_rows)):
                sampled[child.request.request_id] = [res.token_id]
                if child.logprobs is not None:
                    child.cumulative_logprob += res.logprob
                    entry = {tid: Logprob(lp) for tid, lp in res.top_logprobs}
                    entry[res.token_id] = Logprob(res.logprob, res.rank)
                    for tid, lp in entry.items():
                        if self.tokenizer is not None:
                            lp.decoded_token = self.tokenizer.decode(
                                [tid], skip_special_tokens=False
                            )
                    for rank, (tid, _) in enumerate(res.top_logprobs, start=1):
                        entry[tid].rank = rank
                    child.logprobs.append(entry)
        self.scheduler.update(out, sampled)
        done_time = time.monotonic()
        for group, child in children:
            self._process_token(group, child, done_time)
            touched[group.request_id] = group
        self.num_generation_tokens += len(sampled)
        self.num_computed_prefill_tokens += sum(s.num_tokens for s in out.stages if s.is_prefill)
        outputs = []
        for group in touched.values():
            outputs.append(self._make_output(group))
            if group.finished:
                self.groups.pop(group.request_id, None)
                group.metrics.finished_time = done_time
                for c in group.children:
                    self._child_to_group.pop(c.request.request_id, None)
        return outputs

    def _process_token(self, group: _Group, child: _Child, now: float) -> None:
        r = child.request
        p = group.params
        m = group.metrics
        if m.first_token_time is None:
            m.first_token_time = now
        m.last_token_time = now
        tok = r.output_token_ids[-1]
        reason, stop_reason = None, None
        if tok in p.stop_token_ids and len(r.output_token_ids) > p.min_tokens - 1:
            reason, stop_reason = "stop", tok
        elif not p.ignore_eos and tok in self.eos_token_ids:
            if len(r.output_token_ids) >= p.min_tokens:
                reason = "stop"
        if self.tokenizer is not None:
            prev = len(child.text)
            child.text = self.tokenizer.decode(r.output_token_ids, p.skip_special_tokens)
            if reason is None and p.stop_strings and len(r.output_token_ids) >= p.min_tokens:
                hit = _find_stop(child.text, p.stop_strings, prev)
                if hit is not None:
                    pos, s = hit
                    child.text = child.text[: pos + (len(s) if p.include_stop_str_in_output else 0)]
                    reason, stop_reason = "stop", s
        if reason is None and (
            len(r.output_token_ids) >= r.max_tokens or r.num_tokens >= self.max_model_len
        ):
            reason = "length"
        if reason is not None:
            child.finish_reason = reason
            r.stop_reason = stop_reason
            status = (
                RequestStatus.FINISHED_STOPPED
                if reason == "stop"
                else RequestStatus.FINISHED_LENGTH
            )
            self.scheduler.finish_request(r.request_id, status)

    def _make_output(self, group: _Group) -> RequestOutput:
        outs = [
            CompletionOutput(
                index=c.index,
                text=c.text,
                token_ids=list(c.request.output_token_ids),
                cumulative_logprob=c.cumulative_logprob if c.logprobs is not None else None,
                logprobs=list(c.logprobs) if c.logprobs is not None else None,
                finish_reason=c.finish_reason,
                stop_reason=c.request.stop_reason,
            )
            for c in group.children
        ]
        return RequestOutput(
            request_id=group.request_id,
            prompt=group.prompt,
            prompt_token_ids=group.prompt_token_ids,
            outputs=outs,
            finished=group.finished,
            metrics=group.metrics,
            num_cached_tokens=group.metrics.num_cached_tokens,
        )

    # ---- stats ------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return self.scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting


def _find_stop(text: str, stops: list[str], prev_len: int) -> tuple[int, str] | None:
    best = None
    for s in stops:
        start = max(0, prev_len - len(s) + 1)
        pos = text.find(s, start)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, s)
    return best
