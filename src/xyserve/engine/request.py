"""A request: its token ids and how many of them are computed. Nothing else marks its phase."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (
            RequestStatus.FINISHED_STOPPED,
            RequestStatus.FINISHED_LENGTH,
            RequestStatus.FINISHED_ABORTED,
        )


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    arrival_time: float = 0.0
    sampling_params: Any = None  # opaque to the scheduler
    # This sample's own seed (the request's seed + its index among n), None unseeded: a draft
    # proposes a seeded sample its argmax rather than a draw (xyserve.spec.draft).
    seed: int | None = None
    # vLLM's priority (lower runs first) under the priority scheduling policy; 0 otherwise
    priority: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    # Proposed (speculative) tokens appended after the last real token, to be verified.
    spec_token_ids: list[int] = field(default_factory=list)
    # The proposals' parent array when they form a token tree (xyserve.spec.tree); None: a chain.
    spec_tree_parents: tuple[int, ...] | None = None
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prefix-cache hit at first admission; -1 until admitted
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    stop_reason: int | str | None = None
    # Every prompt position's logits are wanted (prompt logprobs): the prefill computes the
    # whole prompt, reading no cached prefix, and its steps return a logits row per position.
    prompt_logits: bool = False
    # This sample's life on the engine's clock (time.monotonic()), for the metrics: added to the
    # scheduler, first scheduled (a preemption does not move it), first and last token.
    queued_time: float = 0.0
    scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_tokens_with_spec(self) -> int:
        return self.num_tokens + len(self.spec_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def token_at(self, pos: int) -> int:
        p = len(self.prompt_token_ids)
        if pos < p:
            return self.prompt_token_ids[pos]
        pos -= p
        if pos < len(self.output_token_ids):
            return self.output_token_ids[pos]
        return self.spec_token_ids[pos - len(self.output_token_ids)]
