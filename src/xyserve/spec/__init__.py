"""Speculative decoding: the Verify stage of P/D/V.

- ``config``: ``speculative_config`` parsing and validation, with vLLM's keys;
- ``ngram``: prompt-lookup proposals (no model);
- ``verify``: greedy and rejection-sampling acceptance of proposed tokens against the target;
- ``decoder``: the engine's hook: proposes after a step, verifies inside the next one, counts.
"""

from xyserve.spec.config import SpeculativeConfig

__all__ = ["SpeculativeConfig"]
