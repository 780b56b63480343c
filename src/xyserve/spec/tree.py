"""Token trees of the ``tree`` method: ``depth`` levels of ``width`` siblings in level order.

Level 0 holds the draft's top-``width`` tokens after the last real token; level ``l`` holds the
top-``width`` after the best (first) node of level ``l - 1``. So only the best path is extended
(one draft pass per level, as for a chain), and each level adds ``width - 1`` alternatives that
the target checks in the same pass. A chain is the ``width == 1`` tree. Node ``i`` sits at
level ``i // width``; its parent is the first node of the level before (``-1``: the root, the
request's last real token). Any prefix of the node list is a tree of the same shape, so budget
trimming keeps it valid.
"""

from __future__ import annotations


def parent(i: int, width: int) -> int:
    level = i // width
    return -1 if level == 0 else (level - 1) * width


def level(i: int, width: int) -> int:
    return i // width


def stage_positions(context_len: int, num_tokens: int, num_spec: int, width: int) -> list[int]:
    """Positions of a verify stage's tokens: the real ones in order, then nodes by level."""
    lead = num_tokens - num_spec
    pos = list(range(context_len, context_len + lead))
    base = context_len + lead
    pos.extend(base + level(i, width) for i in range(num_spec))
    return pos


def stage_mask(num_tokens: int, num_spec: int, width: int) -> tuple[tuple[bool, ...], ...]:
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
            node = q - lead
            while node >= 0:
                row[lead + node] = True
                node = parent(node, width)
        rows.append(tuple(row))
    return tuple(rows)


def children(node: int, num_spec: int, width: int) -> list[int]:
    """Nodes whose parent is ``node`` (``-1``: the root), among the first ``num_spec``."""
    if node == -1:
        first = 0
    elif node % width == 0:  # only a level's first node has children
        first = node + width
    else:
        return []
    return list(range(first, min(first + width, num_spec)))


def path_moves(
    path: list[int], first_node_pos: int, block_table: list[int], block_size: int
) -> list[tuple[int, int]]:
    """Cache-slot copies that put an accepted path's K/V at consecutive positions.

    Node ``path[j]`` was computed at position ``first_node_pos + path[j]`` and belongs at
    ``first_node_pos + j``; ``path[j] >= j`` always, so reading every source before writing
    (as ``ModelRunner.move_slots`` does) is safe.
    """

    def slot(pos: int) -> int:
        return block_table[pos // block_size] * block_size + pos % block_size

    return [
        (slot(first_node_pos + n), slot(first_node_pos + j)) for j, n in enumerate(path) if n != j
    ]
