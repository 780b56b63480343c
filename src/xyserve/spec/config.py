"""``speculative_config``: vLLM's keys, parsed and validated before the engine starts.

Accepted as a dict (``LLM(speculative_config={...})``) or a JSON string
(``xyserve serve --speculative-config '{"method": "ngram", ...}'``). Unknown keys, unknown
methods and out-of-range values are refused with a ValueError that names them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from xyserve.spec import tree

METHODS: tuple[str, ...] = ("ngram", "draft_model", "tree")
# Methods whose proposer exists in this build; the others are refused by name at start.
IMPLEMENTED_METHODS: tuple[str, ...] = METHODS
# Proposals are verify tokens of every step: a bound on their cost, on a chain's length (and a
# tree's depth, a level's width) as on a tree's nodes.
MAX_TREE_NODES = 64


@dataclass
class SpeculativeConfig:
    method: str
    num_speculative_tokens: int
    model: str | None = None  # draft model (draft_model, tree); defaults per target
    prompt_lookup_min: int = 1  # ngram: shortest suffix n-gram that may match
    prompt_lookup_max: int = 3  # ngram: longest suffix n-gram tried first
    # tree (see spec/tree.py): the draft's top-``tree_width`` after the root, each extended as
    # its own chain to ``tree_depth`` levels (default num_speculative_tokens); or any static
    # tree as a branching list (children per node, level by level: [2, 1, 1] is the former
    # with width 2 and depth 3).
    tree_width: int = 2
    tree_depth: int | None = None
    tree_branching: list[int] | None = None
    # tree: a dynamic tree instead (EAGLE-2 style): the draft expands the tree_beam most likely
    # nodes of each of tree_depth levels by tree_width children each, and proposes the
    # tree_nodes most likely nodes (by the draft's path probability). A beam of 1 runs the
    # draft on as many rows as a chain does (one a level): the tree's extra nodes are the
    # expanded nodes' siblings.
    tree_nodes: int | None = None
    tree_beam: int = 1
    # Adaptive speculation: no proposals while this many requests or more are decoding
    # (vLLM's disable_by_batch_size); None: never disabled by batch size alone.
    disable_by_batch_size: int | None = None
    # Adaptive k per request from its observed acceptance; False: always k proposals.
    adaptive: bool = True
    # draft_model, tree: the token ids the draft may propose (``spec.token_map``): a token map
    # file; None: the draft directory's token_map.json where it has one (else every token);
    # False: every token.
    draft_token_map: str | bool | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"speculative_config: unknown method {self.method!r} (expected one of {METHODS})"
            )
        if self.method not in IMPLEMENTED_METHODS:
            raise ValueError(
                f"speculative_config: method {self.method!r} is not implemented in this build "
                f"(available: {IMPLEMENTED_METHODS})"
            )
        _check_int("num_speculative_tokens", self.num_speculative_tokens, 1, MAX_TREE_NODES)
        _check_int("prompt_lookup_min", self.prompt_lookup_min, 1)
        _check_int("prompt_lookup_max", self.prompt_lookup_max, 1)
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                "speculative_config: prompt_lookup_min must not exceed prompt_lookup_max "
                f"(got {self.prompt_lookup_min} > {self.prompt_lookup_max})"
            )
        _check_int("tree_width", self.tree_width, 1, MAX_TREE_NODES)
        if self.tree_depth is not None:
            _check_int("tree_depth", self.tree_depth, 1, MAX_TREE_NODES)
        if self.disable_by_batch_size is not None:
            _check_int("disable_by_batch_size", self.disable_by_batch_size, 1)
        if not isinstance(self.adaptive, bool):
            raise ValueError(
                f"speculative_config: adaptive must be a boolean, got {self.adaptive!r}"
            )
        tree_keys = self.tree_depth is not None or self.tree_width != 2
        others = self.tree_branching is not None or self.tree_nodes is not None
        if self.method != "tree" and (tree_keys or others):
            raise ValueError(
                "speculative_config: tree_width/tree_depth/tree_branching/tree_nodes are for "
                "method 'tree'"
            )
        _check_int("tree_beam", self.tree_beam, 1, MAX_TREE_NODES)
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ValueError(
                "speculative_config: model must be the draft's directory or bundled name, "
                f"got {self.model!r}"
            )
        if self.tree_beam != 1 and self.tree_nodes is None:
            raise ValueError("speculative_config: tree_beam is for dynamic trees (tree_nodes)")
        if self.tree_nodes is not None:
            _check_int("tree_nodes", self.tree_nodes, 1)
            if self.tree_nodes > MAX_TREE_NODES:
                raise ValueError(
                    f"speculative_config: tree_nodes must be at most {MAX_TREE_NODES}, "
                    f"got {self.tree_nodes}"
                )
            # the tree proposes its tree_nodes likeliest candidates: refuse a count that its
            # width, depth and beam can never grow (it would be accepted and not honoured)
            grow = tree.max_candidates((self.tree_width,) * self.depth, self.tree_beam, self.depth)
            if self.tree_nodes > grow and self.tree_branching is None:  # (both: refused below)
                raise ValueError(
                    f"speculative_config: tree_nodes is {self.tree_nodes}, but a dynamic tree "
                    f"of tree_width {self.tree_width}, depth {self.depth} and tree_beam "
                    f"{self.tree_beam} grows at most {grow} nodes; lower tree_nodes or raise "
                    "one of those"
                )
        if self.tree_branching is not None:
            b = self.tree_branching
            if not isinstance(b, list) or not b:
                raise ValueError(
                    f"speculative_config: tree_branching must be a non-empty list, got {b!r}"
                )
            for x in b:
                _check_int("tree_branching entries", x, 1, MAX_TREE_NODES)
            if len(b) > MAX_TREE_NODES:
                raise ValueError(
                    f"speculative_config: tree_branching has {len(b)} levels "
                    f"(at most {MAX_TREE_NODES})"
                )
            if tree_keys or self.tree_nodes is not None:
                raise ValueError(
                    "speculative_config: give tree_branching or tree_width/tree_depth"
                    "/tree_nodes, not both"
                )
            nodes = tree.max_candidates(tuple(b), None, len(b))  # counted, not built
            if nodes > MAX_TREE_NODES:
                raise ValueError(
                    f"speculative_config: tree_branching {b} has {nodes} nodes "
                    f"(at most {MAX_TREE_NODES})"
                )
        elif self.method == "tree" and self.tree_nodes is None:
            # the static tree of tree_width and tree_depth: its nodes are verify tokens too
            nodes = self.tree_width * self.depth
            if nodes > MAX_TREE_NODES:
                raise ValueError(
                    f"speculative_config: a tree of tree_width {self.tree_width} and depth "
                    f"{self.depth} has {nodes} nodes (at most {MAX_TREE_NODES}); lower one "
                    "of them, or give tree_nodes for a dynamic tree"
                )
        if self.model is not None and self.method == "ngram":
            raise ValueError("speculative_config: method 'ngram' takes no 'model'")
        m = self.draft_token_map
        if not (m is None or m is False or (isinstance(m, str) and m)):
            raise ValueError(
                f"speculative_config: draft_token_map must be a token map file or false, got {m!r}"
            )
        if m is not None and self.method == "ngram":
            raise ValueError("speculative_config: method 'ngram' takes no 'draft_token_map'")

    @classmethod
    def parse(
        cls, value: SpeculativeConfig | dict[str, Any] | str | None
    ) -> SpeculativeConfig | None:
        """A dict, a JSON object string, a config or None (no speculation)."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"speculative_config: not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise ValueError(
                f"speculative_config must be a JSON object, got {type(value).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"speculative_config: unknown keys {unknown} (known: {sorted(known)})")
        if "method" not in value:
            raise ValueError("speculative_config: 'method' is required")
        if value["method"] not in METHODS:  # before what the method would need
            raise ValueError(
                f"speculative_config: unknown method {value['method']!r} (expected one of "
                f"{METHODS})"
            )
        if "num_speculative_tokens" not in value:
            raise ValueError("speculative_config: 'num_speculative_tokens' is required")
        return cls(**value)

    @property
    def depth(self) -> int:
        """The most proposals on one path (tokens that one verify can accept)."""
        if self.method == "tree" and self.tree_branching is not None:
            return len(self.tree_branching)
        if self.method == "tree" and self.tree_depth is not None:
            return self.tree_depth
        return self.num_speculative_tokens

    @property
    def tree_shape(self) -> tree.TreeShape | None:
        """How method ``tree`` grows its trees (greedy requests); None for other methods."""
        if self.method != "tree":
            return None
        if self.tree_nodes is not None:
            w = self.tree_width
            return tree.TreeShape((w,) * self.depth, beam=self.tree_beam, nodes=self.tree_nodes)
        branching = self.tree_branching or [self.tree_width] + [1] * (self.depth - 1)
        return tree.TreeShape(tuple(branching))

    def check_draft_vocab(self, vocab_size: int, where: str = "the draft's vocabulary") -> None:
        """Refuse a tree with more children per node than the draft can propose tokens (its
        vocabulary, or ``where``: its token map's): a node's children are distinct draft
        tokens, its top ones."""
        shape = self.tree_shape
        if shape is None or max(shape.branching) <= vocab_size:
            return
        key = "a tree_branching entry" if self.tree_branching is not None else "tree_width"
        raise ValueError(
            f"speculative_config: {key} is {max(shape.branching)}, but {where} has "
            f"{vocab_size} tokens (a node's children are distinct tokens); give at most "
            f"{vocab_size}"
        )

    def tree_level_sizes(self) -> list[int] | None:
        """Nodes per level of a tree (None: chains). A dynamic tree's shape is known only
        once proposed: its nodes are counted as spread evenly over its levels (an estimate
        for the adaptive cost model)."""
        shape = self.tree_shape
        if shape is None:
            return None
        if shape.nodes is None:
            return tree.level_sizes(tree.from_branching(list(shape.branching)))
        d = len(shape.branching)
        return [shape.nodes // d + (1 if i < shape.nodes % d else 0) for i in range(d)]


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"speculative_config: {name} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"speculative_config: {name} must be at most {high}, got {value!r}")
