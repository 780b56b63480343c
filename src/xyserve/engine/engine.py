"""LLMEngine.step(): schedule -> plan -> execute -> sample -> update -> detokenize/stop."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import torch

from xyserve.config import EngineConfig
from xyserve.engine.capture_sizes import default_capture_sizes
from xyserve.engine.intake import RequestIntake, RequestValidationError
from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.output import Child, Group, OutputProcessor
from xyserve.engine.request import Request, RequestStatus
from xyserve.engine.runner import ModelRunner
from xyserve.engine.sampler import SampleRow, bad_word_bans, sample
from xyserve.engine.scheduler import Scheduler
from xyserve.engine.step_graphs import GraphOptions
from xyserve.engine_metrics import EngineMetrics
from xyserve.model.config import ModelLoadError, sampling_defaults
from xyserve.model.loader import load_model, resolve_device, resolve_dtype
from xyserve.outputs import RequestMetrics, RequestOutput
from xyserve.sampling_params import SamplingParams
from xyserve.spec import tree
from xyserve.spec.config import SpeculativeConfig
from xyserve.spec.decoder import SpecDecoder

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


def generation_defaults(generation_config: str, model_path: Path) -> dict:
    """The request defaults of sampling under ``EngineConfig.generation_config`` (vLLM's
    ``--generation-config``): auto, the model's generation_config.json; vllm, none; else the
    generation_config.json of that folder."""
    if generation_config == "vllm":
        return {}
    folder = model_path if generation_config == "auto" else Path(generation_config)
    if generation_config != "auto" and not (folder / "generation_config.json").is_file():
        raise FileNotFoundError(
            f"generation_config: no generation_config.json in {folder} "
            "(auto: the model's; vllm: none)"
        )
    out = sampling_defaults(folder)
    try:
        SamplingParams(**out)
    except (TypeError, ValueError) as e:
        gen = folder / "generation_config.json"
        raise ModelLoadError(f"{gen}: not a valid sampling default: {e}") from None
    return out


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_path = resolve_model_path(config.model)
        # every name the server answers to; responses carry the first, as in vLLM
        self.served_model_names = config.served_model_names(config.model or self.model_path.name)
        self.model_name = self.served_model_names[0]
        self.default_sampling_params = generation_defaults(config.generation_config,
                                                           self.model_path)  # fmt: skip
        if self.default_sampling_params:
            log.info(
                "sampling defaults from the generation config (--generation-config %s; "
                "a request's own values win): %s",
                config.generation_config,
                self.default_sampling_params,
            )
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        torch.manual_seed(config.seed)
        self.model = load_model(self.model_path, self.device, self.dtype)
        mcfg = self.model.cfg
        self.tokenizer = None
        if not config.skip_tokenizer_init:
            from xyserve.tokenizer import Tokenizer

            tok_path = self.model_path
            if config.tokenizer:  # a bundled name or a directory, as for the model
                try:
                    tok_path = resolve_model_path(config.tokenizer)
                except FileNotFoundError as e:
                    raise FileNotFoundError(f"tokenizer: {e}") from None
            self.tokenizer = Tokenizer(tok_path)
        self.eos_token_ids = set(mcfg.eos_token_ids)
        if not self.eos_token_ids and self.tokenizer and self.tokenizer.eos_token_id is not None:
            self.eos_token_ids = {self.tokenizer.eos_token_id}
        self.max_model_len = config.max_model_len or mcfg.max_position_embeddings
        if self.max_model_len > mcfg.max_position_embeddings:
            raise ValueError(
                f"max_model_len={self.max_model_len} exceeds the model's "
                f"max_position_embeddings={mcfg.max_position_embeddings}"
            )
        window = mcfg.sliding_window
        if window is not None and self.max_model_len > window:
            # Sliding-window attention is not implemented; up to the window it is full
            # attention, so the context stops there (vLLM's disable_sliding_window does so too).
            if config.max_model_len is not None:
                raise ValueError(
                    f"max_model_len={self.max_model_len} exceeds the model's "
                    f"sliding_window={window} (sliding-window attention is not supported)"
                )
            log.warning(
                "the model's attention slides over %d tokens, which is not supported: "
                "capping max_model_len to %d",
                window,
                window,
            )
            self.max_model_len = window
        bs = config.block_size
        if config.num_kv_blocks is not None:
            num_blocks = config.num_kv_blocks
        else:
            per_block = ModelRunner.bytes_per_block(mcfg, bs, self.dtype)
            want = 2 * config.max_num_seqs * -(-self.max_model_len // bs)
            num_blocks = max(1, min(config.kv_cache_memory_bytes // per_block, want))
        if num_blocks * bs < self.max_model_len:
            # A request of max_model_len tokens could never fit, and would wait forever. An
            # explicit max_model_len is refused (vLLM refuses one its cache cannot hold); the
            # model's own length is capped to what the cache holds, and said, as a sliding
            # window caps it above.
            if config.max_model_len is not None:
                raise ValueError(
                    f"max_model_len={self.max_model_len} needs "
                    f"{-(-self.max_model_len // bs)} K/V blocks of {bs} tokens but the cache "
                    f"has {num_blocks} ({num_blocks * bs} tokens): lower max_model_len, or give "
                    f"the cache more (num_kv_blocks, kv_cache_memory_bytes)"
                )
            log.warning(
                "max_model_len=%d needs %d K/V blocks of %d tokens but the cache has %d: "
                "capping max_model_len to %d",
                self.max_model_len,
                -(-self.max_model_len // bs),
                bs,
                num_blocks,
                num_blocks * bs,
            )
            self.max_model_len = num_blocks * bs
        self.kv = KVCacheManager(num_blocks, bs, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.kv,
            config.max_num_batched_tokens,
            config.max_num_seqs,
            self.max_model_len,
            policy=config.scheduler_policy,
            num_reserved_decode_tokens=config.num_reserved_decode_tokens,
            **config.scheduler_knobs(),
        )
        gemm_kwargs = {}
        if config.gemm_backend == "smooth":  # its tuned table lives beside the model or in a cache
            gemm_kwargs = {
                "model_path": str(self.model_path),
                "device": self.device.type,
                "dtype": str(self.dtype).removeprefix("torch."),
                "allow_tf32": config.allow_tf32,
            }
        self.runner = ModelRunner(
            self.model,
            num_blocks,
            bs,
            config.attention_backend,
            config.gemm_backend,
            gemm_kwargs,
            allow_tf32=config.allow_tf32,
            graphs=self._graph_options(),
            cpu_fused_decode=config.cpu_fused_decode,
        )
        fused = self.runner.fused
        # auto splits beside a float32 fused call only: there a decode-only step costs what the
        # decodes add to a mixed step; in bfloat16 the eager forward's GEMMs (AMX) take decodes
        # beside a prefill chunk for much less than the fused call's float32 arithmetic does
        # (docs/perf.md, "bfloat16 on AMX")
        split_rows = fused.max_rows if fused is not None and self.dtype == torch.float32 else None
        self.scheduler.split_decode_rows = config.split_decode_rows(split_rows)
        self.intake = RequestIntake(
            config,
            self.tokenizer,
            mcfg.vocab_size,
            self.eos_token_ids,
            self.max_model_len,
            self.default_sampling_params.get("max_tokens"),
        )
        self.output = OutputProcessor(self.tokenizer, self.eos_token_ids, self.max_model_len)
        self.groups: dict[str, Group] = {}
        self._child_to_group: dict[str, tuple[Group, Child]] = {}
        self._ids = itertools.count()
        self.num_steps = 0
        # Beside the metrics (self.metrics), counted where they are: prompt tokens as vLLM
        # counts them (a sample's whole prompt when its first token comes), prefill run (cache
        # hits excluded), tokens generated, requests failed inside a step and aborted.
        self.num_prompt_tokens = 0
        self.num_computed_prefill_tokens = 0
        self.num_generation_tokens = 0
        self.num_failed_requests = 0
        self.num_aborted_requests = 0
        log.info(
            "engine ready: model=%s dtype=%s device=%s kv_blocks=%d block_size=%d "
            "kv_tokens=%d max_model_len=%d budget=%d max_num_seqs=%d policy=%s "
            "attention=%s gemm=%s split_steps=%s",
            self.model_name,
            str(self.dtype).removeprefix("torch."),
            self.device,
            num_blocks,
            bs,
            num_blocks * bs,
            self.max_model_len,
            config.max_num_batched_tokens,
            config.max_num_seqs,
            config.scheduler_policy,
            config.attention_backend,
            config.gemm_backend,
            "off"
            if self.scheduler.split_decode_rows is None
            else f"up to {self.scheduler.split_decode_rows} decode tokens",
        )
        # Speculative decoding (the Verify stage): proposes after each step, verifies in the next.
        spec = SpeculativeConfig.parse(config.speculative_config)
        self.spec = SpecDecoder.for_engine(spec, self) if spec is not None else None
        k = self.spec.stats.num_speculative_tokens if self.spec is not None else None
        self.metrics = EngineMetrics(self.model_name, self.max_model_len, k)
        self.metrics.bind_state(
            lambda: self.num_running,
            lambda: self.num_waiting,
            lambda: self.kv.usage,
            lambda: self.kv.prefix_hit_rate,
        )
        self.kv.on_prefix_query = self.metrics.observe_prefix_query
        if self.spec is not None:
            self.spec.stats.listener = self.metrics.observe_spec

    def _graph_options(self) -> GraphOptions | None:
        """The CUDA graphs of the step loop, or None (eager), said in a log line. The runner
        may still turn them off (an attention backend that plans per step) and says so."""
        cfg = self.config
        if cfg.enforce_eager or self.device.type != "cuda":
            why = "enforce_eager" if cfg.enforce_eager else f"device {self.device.type}"
            log.info("CUDA graphs: off (%s); every step runs eagerly", why)
            return None
        sizes = cfg.cudagraph_capture_sizes or default_capture_sizes(
            cfg.max_num_seqs, cfg.max_num_batched_tokens
        )
        return GraphOptions(sizes, -(-self.max_model_len // cfg.block_size), capture=True)

    # ---- requests ---------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | list[int] | dict,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        arrival_time: float | None = None,
        add_special_tokens: bool = True,
        priority: int = 0,
    ) -> str:
        """Admit a request whole, or raise and admit nothing (no child is left behind).
        ``priority``: vLLM's (lower first), under the priority scheduling policy only."""
        self.intake.check_priority(priority)
        params = self.intake.compiled(params or SamplingParams())
        text, ids = self.intake.prompt_ids(prompt, add_special_tokens)
        text, ids = self.intake.truncated(text, ids, params)
        max_tokens = self.intake.validate(ids, params)
        rid = request_id if request_id is not None else str(next(self._ids))
        if rid in self.groups:
            raise RequestValidationError(f"duplicate request id {rid!r}")
        child_ids = [rid] if params.n == 1 else [f"{rid}#{i}" for i in range(params.n)]
        # A child's id (``<id>#<i>``) may be another request's id or child's: refused here,
        # before any child replaces that request's entries.
        taken = [c for c in child_ids if c in self._child_to_group or c in self.scheduler.requests]
        if taken:
            raise RequestValidationError(
                f"request id {rid!r} (n={params.n}) needs the id {taken[0]!r} for a sample, "
                "which another request in flight already uses"
            )
        now = arrival_time if arrival_time is not None else time.monotonic()
        group = Group(rid, text, ids, params, metrics=RequestMetrics(arrival_time=now))
        if params.prompt_logprobs is not None:
            group.prompt_logprobs = [None] * len(ids)
        # Build every child first: only then does any of them reach the scheduler.
        for i, child_id in enumerate(child_ids):
            gen, seed = None, None
            if params.seed is not None:
                seed = params.seed + i
                gen = torch.Generator().manual_seed(seed)
            req = Request(child_id, list(ids), max_tokens, now, params, seed, priority=priority)
            # The first sample computes the prompt's logprobs (and its whole prompt); the
            # others share its blocks through the prefix cache as usual.
            req.prompt_logits = params.prompt_logprobs is not None and i == 0
            matcher = params.structured.new_matcher() if params.structured is not None else None
            logprobs = [] if params.logprobs is not None else None
            group.children.append(Child(req, i, gen, logprobs=logprobs, matcher=matcher))
        queued = time.monotonic()
        for c in group.children:
            self._child_to_group[c.request.request_id] = (group, c)
            c.request.queued_time = queued
            self.scheduler.add_request(c.request)
        self.groups[rid] = group
        return rid

    def abort_request(self, request_id: str) -> bool:
        """Abort a request and free everything it holds; False if it was not running."""
        group = self.groups.pop(request_id, None)
        if group is None:
            return False
        self._release(group, RequestStatus.FINISHED_ABORTED)
        self.num_aborted_requests += 1
        self.metrics.request_aborted.inc()
        return True

    def withdraw_request(self, request_id: str) -> None:
        """Undo the admission of a request that has not run yet: the all-or-none rollback of a
        multi-prompt add that failed part-way. Unlike ``abort_request`` it is not counted as
        an abort (nothing of it ran, so nothing else was counted): to the metrics it never
        came."""
        group = self.groups.pop(request_id)
        self._release(group, RequestStatus.FINISHED_ABORTED)

    def _release(self, group: Group, status: RequestStatus) -> None:
        """Finish every child of ``group`` in the scheduler (freeing its blocks) and forget it."""
        for c in group.children:
            self.scheduler.finish_request(c.request.request_id, status)
            self._child_to_group.pop(c.request.request_id, None)
        if self.spec is not None:
            # The proposer's state of the request (a draft's K/V blocks) goes now: the next
            # proposal would free it, but an engine left idle by an abort makes none.
            self.spec.release_except({r.request_id for r in self.scheduler.running})

    def _fail(self, group: Group, error: str) -> None:
        """Fail one request inside a step: it ends with ``error``; nothing else is touched."""
        if group.error is None:
            log.warning("request %s failed: %s", group.request_id, error)
            group.error = error
            self.num_failed_requests += 1
            self.metrics.request_failed.inc()
        for c in group.children:
            if c.finish_reason is None:
                c.finish_reason = "error"
            self.scheduler.finish_request(c.request.request_id, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return bool(self.groups)

    # ---- the step ---------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        out = self.scheduler.schedule()
        self.metrics.num_preemptions.inc(len(out.preempted))
        if out.is_empty:
            return []
        self.num_steps += 1
        now = time.monotonic()
        block_tables = {
            s.request.request_id: self.kv.block_table(s.request.request_id) for s in out.stages
        }
        result = self.runner.execute(out, block_tables)
        sampled: dict[str, list[int]] = {}
        touched: dict[str, Group] = {}
        for rid, (first, rows) in result.prompt_rows.items():
            group = self._child_to_group[rid][0]
            touched[group.request_id] = group
            logits = result.logits[rows]
            self._guard(group, self.output.record_prompt_logprobs, group, first, logits)
        rows, sample_rows, children = [], [], []
        verifies: list[tuple[Group, Child, object]] = []  # spec
        emitted: dict[str, list] = {}  # spec: the SampleResults of multi-token verify outputs
        for st in out.stages:
            rid = st.request.request_id
            group, child = self._child_to_group[rid]
            if group.metrics.first_scheduled_time is None:
                group.metrics.first_scheduled_time = now
                group.metrics.num_cached_tokens = max(0, st.request.num_cached_tokens)
            if st.request.scheduled_time is None:
                st.request.scheduled_time = now
            if rid not in result.rows:
                continue
            r = st.request
            blocked = []
            if len(r.output_token_ids) < group.params.min_tokens:
                blocked = sorted(self.eos_token_ids | set(group.params.stop_token_ids))
            if group.params.bad_words_token_ids:
                blocked += bad_word_bans(group.params.bad_words_token_ids, r.output_token_ids)
            if st.num_spec_tokens:  # spec: a verify stage, accepted below
                verifies.append((group, child, st))
                continue
            rows.append(result.rows[rid].stop - 1)
            sample_rows.append(
                SampleRow(
                    group.params,
                    r.prompt_token_ids,
                    r.output_token_ids,
                    child.generator,
                    blocked,
                    child.matcher,
                )
            )
            children.append((group, child))
        if rows:
            logits = result.logits
            if rows != list(range(logits.shape[0])):  # a copy of [R, V] only when rows differ
                logits = logits[rows]
            results = sample(logits, sample_rows, result.argmax_of(rows))
            for (group, child), res in zip(children, results):
                touched[group.request_id] = group
                if res.error is not None:  # this request's sampling failed: only it ends
                    self._fail(group, res.error)
                    continue
                sampled[child.request.request_id] = [res.token_id]
                self._guard(group, self.output.record_logprobs, child, res)
        num_accepted: dict[str, int] | None = {} if verifies else None
        for group, child, st in verifies:  # each verify fails alone, as a sampling row does
            accept = (group, child, st, result, sampled, emitted, num_accepted)
            self._guard(group, self._verify, *accept)
        children.extend((g, c) for g, c, _ in verifies)
        # Tokens a verify emits past a stop are cut below: count what the outputs keep.
        before = {c.request.request_id: c.request.num_output_tokens for _, c in children}
        self.scheduler.update(out, sampled, num_accepted)
        done_time = time.monotonic()
        for group, child in children:
            touched[group.request_id] = group
            rid = child.request.request_id
            if group.error is not None or rid not in sampled:
                continue
            results = emitted.get(rid)
            if results is None:
                self._guard(group, self._process_token, group, child, done_time)
            else:
                self._guard(group, self._process_run, group, child, done_time, results)
        self._observe_tokens(children, before, done_time)
        self.num_computed_prefill_tokens += sum(s.num_tokens for s in out.stages if s.is_prefill)
        outputs = []
        for group in touched.values():
            for c in group.children:
                if c.finish_reason is not None and not c.counted:
                    c.counted = True
                    self._observe_finished(group, c, done_time)
            outputs.append(self.output.make_output(group))
            if group.finished:
                self.groups.pop(group.request_id, None)
                group.metrics.finished_time = done_time
                for c in group.children:
                    self._child_to_group.pop(c.request.request_id, None)
                m = self.metrics
                m.request_params_n.observe(group.params.n)
                most = max(c.request.num_output_tokens for c in group.children)
                m.request_max_num_generation_tokens.observe(most)
        if self.spec is not None:  # spec: time the step for the cost model, then propose
            self.spec.observe_step(out.num_tokens, done_time - now)
            self._propose()
        return outputs

    def _propose(self) -> None:
        """Proposals for the next step. They only save steps, so a proposer that raises (a
        draft-model bug, say) costs this round of proposals, not the requests or the step's
        outputs: the running requests decode one token next step instead."""
        try:
            self.spec.propose([r for r in self.scheduler.running if self._speculable(r)])
        except Exception:
            log.exception("speculative proposal failed; the next step decodes without proposals")

    def _guard(self, group: Group, fn, *args) -> None:  # noqa: ANN001 - any per-request step
        """Run one request's share of the step's output work; an error fails that request only."""
        if group.error is not None:
            return
        try:
            fn(*args)
        except Exception as e:  # a bug or bad data in one request must not end the batch
            log.exception("processing request %s failed", group.request_id)
            self._fail(group, f"{type(e).__name__}: {e}")

    # ---- speculative decoding (the Verify stage; see xyserve.spec) -----------------------
    def _verify(
        self, group: Group, child: Child, st, result, sampled: dict, emitted: dict, accepted: dict
    ) -> None:
        """Accept one verify stage's proposals: the emitted tokens' sample results go to
        ``emitted``, the last token to ``sampled``, the number accepted to ``accepted``."""
        r = child.request
        p = group.params
        row = SampleRow(p, r.prompt_token_ids, r.output_token_ids, child.generator, [])
        draft = r.spec_token_ids[: st.num_spec_tokens]
        block = sorted(self.eos_token_ids | set(p.stop_token_ids))
        rows = result.rows[r.request_id]
        logits = result.logits[rows]
        parents = r.spec_tree_parents
        argmax = result.argmax_of(rows)
        res = self.spec.verify(r.request_id, logits, draft, row, block, parents, argmax)
        if parents is not None:  # a tree: its accepted path's K/V move to consecutive slots
            first = st.kv_len - st.num_spec_tokens
            table = self.kv.block_table(r.request_id)
            bs = self.config.block_size
            self.runner.move_slots(tree.path_moves(res.path, first, table, bs))
            r.spec_token_ids = [draft[n] for n in res.path]
        accepted[r.request_id] = res.num_accepted
        emitted[r.request_id] = res.samples
        sampled[r.request_id] = res.token_ids[-1:]

    def _speculable(self, r: Request) -> bool:
        """Whether a request may be proposed for: verification samples from the target's
        distribution after penalties and top-k/p, but does not apply ``logit_bias``,
        ``allowed_token_ids``, ``bad_words`` or a structured-output grammar, so such requests decode one token a step."""
        entry = self._child_to_group.get(r.request_id)
        if entry is None:
            return False
        group, child = entry
        return not group.params.reshapes_logits and child.matcher is None

    def _process_run(self, group: Group, child: Child, now: float, results: list) -> None:
        """Several new tokens of one verify, checked one by one: a stop inside cuts there."""
        r = child.request
        new = r.output_token_ids[-len(results) :]
        del r.output_token_ids[-len(results) :]
        for tok, res in zip(new, results):
            r.output_token_ids.append(tok)
            self.output.record_logprobs(child, res)
            self._process_token(group, child, now)
            if child.finish_reason is not None:
                break

    def _process_token(self, group: Group, child: Child, now: float) -> None:
        r = child.request
        m = group.metrics
        if m.first_token_time is None:
            m.first_token_time = now
        m.last_token_time = now
        if child.matcher is not None:
            child.matcher.advance(r.output_token_ids[-1])
        reason, stop_reason = self.output.finish_reason(group, child)
        if reason is not None:
            child.finish_reason = reason
            r.stop_reason = stop_reason
            status = (
                RequestStatus.FINISHED_STOPPED
                if reason == "stop"
                else RequestStatus.FINISHED_LENGTH
            )
            self.scheduler.finish_request(r.request_id, status)

    # ---- stats ------------------------------------------------------------------------
    def _observe_tokens(self, children: list, before: dict[str, int], now: float) -> None:
        """The step's tokens, as vLLM's IterationStats counts them: a sample's whole prompt
        when its first token comes (cached tokens included; once, whatever preemptions
        follow), its time to first token, then one inter-token latency per step that gives it
        tokens (a verify stage's run of tokens is one)."""
        m = self.metrics
        prompt = generated = 0
        for _, c in children:
            r = c.request
            new = r.num_output_tokens - before[r.request_id]
            if new <= 0:
                continue
            generated += new
            if r.first_token_time is None:
                r.first_token_time = now
                prompt += r.num_prompt_tokens
                m.time_to_first_token.observe(now - r.arrival_time)
            else:
                m.inter_token_latency.observe(now - r.last_token_time)
            r.last_token_time = now
        self.num_prompt_tokens += prompt
        self.num_generation_tokens += generated
        m.prompt_tokens.inc(prompt)
        m.generation_tokens.inc(generated)
        m.iteration_tokens.observe(prompt + generated)

    def _observe_finished(self, group: Group, child: Child, now: float) -> None:
        """One sample finished (stop, length, or error): vLLM's finished-request metrics."""
        m, r = self.metrics, child.request
        success = m.request_success.get(child.finish_reason)
        if success is not None:
            success.inc()
        m.e2e_request_latency.observe(now - r.arrival_time)
        m.request_prompt_tokens.observe(r.num_prompt_tokens)
        m.request_generation_tokens.observe(r.num_output_tokens)
        if group.params.max_tokens:
            m.request_params_max_tokens.observe(group.params.max_tokens)
        if r.scheduled_time is None:
            return
        m.request_queue_time.observe(r.scheduled_time - r.queued_time)
        if r.first_token_time is None:
            return
        decode = r.last_token_time - r.first_token_time
        m.request_prefill_time.observe(r.first_token_time - r.scheduled_time)
        m.request_decode_time.observe(decode)
        m.request_inference_time.observe(r.last_token_time - r.scheduled_time)
        if r.num_output_tokens > 1:
            m.request_time_per_output_token.observe(decode / (r.num_output_tokens - 1))

    @property
    def num_running(self) -> int:
        return self.scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting
