"""Token trees of the ``tree`` method, given as a parent array.

A tree of ``n`` proposed nodes is a tuple ``parents``: ``parents[i]`` is node ``i``'s parent
(``-1``: the root, the request's last real token), and every parent comes before its children
(``parents[i] < i``), so any prefix of the node list is a tree too and budget trimming keeps it
valid. A chain is ``(-1, 0, 1, ...)``; :func:`from_branching` builds the static trees of
vLLM/Medusa/Sequoia style from a branching list (``[2, 1, 1]``: the draft's top-2 after the
root, each extended by its own top-1 twice: two chains of three).

Why not the draft's best path plus leaf siblings: under greedy verification a leaf sibling
that matches the target's token is the token the target emits anyway (the bonus), so such a
tree accepts no more than the chain. Here every node of a level but the last has children.

In a verify stage the nodes sit at positions ``last real position + 1 + depth`` and occupy the
stage's cache slots in node order; the mask lets a node see the real tokens and its ancestors;
after acceptance :func:`path_moves` puts the accepted path's K/V at consecutive positions.
"""

from __future__ import annotations

from dataclasses import dataclass

Parents = tuple[int, ...]


@dataclass(frozen=True)
class TreeShape:
    """How the draft grows a request's tree, level by level.

    ``branching[l]``: children (the draft's top-b tokens) of each expanded node of level
    ``l - 1`` (the root for ``l == 0``). Static (``beam`` and ``nodes`` None): every node
    but the last level's is expanded and all are proposed (:func:`from_branching`'s tree).
    Dynamic (EAGLE-2 style): the ``beam`` most likely nodes of each level are expanded (a
    node's likelihood: the draft's probability of its path) and the ``nodes`` most likely
    candidates, with their ancestors, are proposed; so a tree can spend as many verify tokens
    as a chain and put them where the draft is unsure.
    """

    branching: tuple[int, ...]
    beam: int | None = None
    nodes: int | None = None


def max_candidates(branching: tuple[int, ...], beam: int | None, levels: int) -> int:
    """The most candidates a tree of ``levels`` levels can have (every node of a level,
    or its ``beam`` best, expanded by the next level's branching)."""
    total, front = 0, 1
    for b in branching[:levels]:
        width = front * b
        total += width
        front = width if beam is None else min(width, beam)
    return total


def chain(n: int) -> Parents:
    return tuple(range(-1, n - 1))


def from_branching(branching: list[int]) -> Parents:
    """Level by level: each node of level ``l - 1`` (the root for ``l == 0``) gets
    ``branching[l]`` children, in level order (a node's children are consecutive)."""
    parents: list[int] = []
    level = [-1]
    for b in branching:
        nxt = []
        for p in level:
            for _ in range(b):
                nxt.append(len(parents))
                parents.append(p)
        level = nxt
    return tuple(parents)


def validate(parents: Parents) -> None:
    for i, p in enumerate(parents):
        if not -1 <= p < i:
            raise ValueError(f"token tree: node {i}'s parent {p} must be -1 or an earlier node")


def depths(parents: Parents) -> list[int]:
    """Each node's depth (0: a child of the root)."""
    d: list[int] = []
    for p in parents:
        d.append(0 if p < 0 else d[p] + 1)
    return d


def ancestors(node: int, parents: Parents) -> list[int]:
    """``node`` and its ancestors, root-most first."""
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def top_chain(parents: Parents) -> list[int]:
    """The draft's own chain inside a tree: node 0 (the root's first child), then each chain
    node's first child. A node's children are the draft's top tokens after it in rank order
    (the static tree's and the dynamic tree's alike), so this is the chain of the draft's
    argmax that method ``draft_model`` would have proposed, as far as the tree holds it."""
    chain: list[int] = []
    node = -1
    for i, p in enumerate(parents):
        if p == node:
            chain.append(i)
            node = i
    return chain


def level_sizes(parents: Parents) -> list[int]:
    """Nodes per depth."""
    sizes: list[int] = []
    for d in depths(parents):
        if d == len(sizes):
            sizes.append(0)
        sizes[d] += 1
    return sizes


def stage_positions(
    context_len: int, num_tokens: int, num_spec: int, parents: Parents
) -> list[int]:
    """Positions of a verify stage's tokens: the real ones in order, then nodes at their depth."""
    lead = num_tokens - num_spec
    pos = list(range(context_len, context_len + lead))
    base = context_len + lead
    pos.extend(base + d for d in depths(parents[:num_spec]))
    return pos


def stage_mask(num_tokens: int, num_spec: int, parents: Parents) -> tuple[tuple[bool, ...], ...]:
    """Mask over the stage's new tokens: real tokens causal; a node sees them and its ancestors."""
    lead = num_tokens - num_spec
    rows = []
    for q in range(num_tokens):
        row = [False] * num_tokens
        if q < lead:
            for j in range(q + 1):
                row[j] = True
        else:
            for j in range(lead):
                row[j] = True
            for a in ancestors(q - lead, parents):
                row[lead + a] = True
        rows.append(tuple(row))
    return tuple(rows)


def children(node: int, num_spec: int, parents: Parents | None) -> list[int]:
    """Nodes whose parent is ``node`` (``-1``: the root), among the first ``num_spec``
    (``parents`` None: a chain)."""
    if parents is None:
        return [node + 1] if node + 1 < num_spec else []
    return [i for i in range(num_spec) if parents[i] == node]


def path_moves(
    path: list[int], first_node_pos: int, block_table: list[int], block_size: int
) -> list[tuple[int, int]]:
    """Cache-slot copies that put an accepted path's K/V at consecutive positions.

    Node ``path[j]`` was computed at position ``first_node_pos + path[j]`` and belongs at
    ``first_node_pos + j``; ``path[j] >= j`` always (parents precede children), so reading
    every source before writing (as ``ModelRunner.move_slots`` does) is safe.
    """

    def slot(pos: int) -> int:
        return block_table[pos // block_size] * block_size + pos % block_size

    return [
        (slot(first_node_pos + n), slot(first_node_pos + j)) for j, n in enumerate(path) if n != j
    ]
