"""Speculative decoding counters (exported by the engine's metrics, xyserve.engine_metrics)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class SpecStats:
    num_speculative_tokens: int
    num_drafts: int = 0  # verify stages run (one per request per step that verified proposals)
    num_draft_tokens: int = 0  # proposals verified
    num_accepted_tokens: int = 0  # proposals accepted
    accepted_per_pos: list[int] = field(default_factory=list)  # accepted at position 0, 1, ...
    propose_seconds: float = 0.0  # time spent proposing (the draft's share of a step)
    # Told of every verify stage (num_draft, num_accepted): the engine's metrics
    listener: Callable[[int, int], None] | None = None

    def __post_init__(self) -> None:
        if not self.accepted_per_pos:
            self.accepted_per_pos = [0] * self.num_speculative_tokens

    def record(self, num_draft: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_draft
        self.num_accepted_tokens += num_accepted
        for i in range(num_accepted):
            self.accepted_per_pos[i] += 1
        if self.listener is not None:
            self.listener(num_draft, num_accepted)

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verify stage: accepted proposals plus the target's own token."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0
