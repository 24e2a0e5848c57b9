"""A radix tree of token ids -> their key/value cache, for the HF engine's automatic prefix reuse.

The idea of SGLang's RadixAttention / vLLM's automatic prefix caching, written small because transformers has
no shared-prefix cache: every finished sequence is inserted (only the part not already stored is copied), a
new request copies the KV of its longest stored prefix and only runs the model on the rest. In a search tree
a node's context is its parent's context plus one segment, so the prefix of every expansion is stored.
Least-recently-used leaves are evicted when the stored tokens exceed the budget.

A segment's KV is one tensor [layers, 2 (key, value), kv_heads, tokens, head_dim].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass(eq=False)
class _Edge:
    tokens: List[int]
    kv: object  # torch.Tensor [layers, 2, heads, len(tokens), dim]
    parent: Optional["_Edge"]
    children: Dict[int, "_Edge"] = field(default_factory=dict)
    last_used: int = 0


class PrefixCache:
    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.root = _Edge([], None, None)
        self.tokens = 0
        self.clock = 0

    def _walk(self, ids: List[int]) -> Tuple[List[Tuple[_Edge, int]], int]:
        """[(edge, tokens matched on it)], total matched; the last edge may be matched partially."""
        path, pos, node = [], 0, self.root
        while pos < len(ids):
            edge = node.children.get(ids[pos])
            if edge is None:
                break
            k = len(edge.tokens)
            if edge.tokens != ids[pos:pos + k]:  # the common case, a whole edge, is one C-level comparison
                k, limit = 1, min(k, len(ids) - pos)
                while k < limit and edge.tokens[k] == ids[pos + k]:
                    k += 1
            path.append((edge, k))
            pos += k
            if k < len(edge.tokens):
                break
            node = edge
        return path, pos

    def match(self, ids: List[int]):
        """(matched length, list of KV pieces [layers, 2, heads, n, dim] covering ids[:matched])."""
        path, matched = self._walk(ids)
        self.clock += 1
        pieces = []
        for edge, k in path:
            edge.last_used = self.clock
            pieces.append(edge.kv if k == len(edge.tokens) else edge.kv[:, :, :, :k])
        return matched, pieces

    def _split(self, edge: _Edge, k: int) -> _Edge:
        """Cut `edge` after k tokens; returns the new upper edge (which keeps the lower one as its only child)."""
        upper = _Edge(edge.tokens[:k], edge.kv[:, :, :, :k].clone(), edge.parent, last_used=edge.last_used)
        edge.parent.children[edge.tokens[0]] = upper
        edge.tokens, edge.kv, edge.parent = edge.tokens[k:], edge.kv[:, :, :, k:].clone(), upper
        upper.children[edge.tokens[0]] = edge
        return upper

    def insert(self, ids: List[int], kv) -> None:
        """Store ids with their KV `kv` [layers, 2, heads, len(ids), dim] (only the part not stored yet is copied)."""
        path, matched = self._walk(ids)
        self.clock += 1
        node = self.root
        for edge, k in path:
            edge.last_used = self.clock
            node = edge if k == len(edge.tokens) else self._split(edge, k)
        if matched < len(ids):
            leaf = _Edge(list(ids[matched:]), kv[:, :, :, matched:].clone(), node, last_used=self.clock)
            node.children[leaf.tokens[0]] = leaf
            self.tokens += len(leaf.tokens)
        if self.tokens > self.max_tokens:
            self._evict(int(self.max_tokens * 0.9))

    def _evict(self, target: int) -> None:
        leaves, stack = [], [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if not node.children and node is not self.root:
                leaves.append(node)
        leaves.sort(key=lambda e: e.last_used)
        while self.tokens > target and leaves:
            leaf = leaves.pop(0)
            parent = leaf.parent
            del parent.children[leaf.tokens[0]]
            self.tokens -= len(leaf.tokens)
            if parent is not self.root and not parent.children:
                # keep the order by age: the parent was used no later than its children
                idx = next((i for i, e in enumerate(leaves) if e.last_used > parent.last_used), len(leaves))
                leaves.insert(idx, parent)

    def clear(self) -> None:
        self.root = _Edge([], None, None)
        self.tokens = 0


def trim_pieces(pieces, n: int):
    """The first `n` tokens of the KV pieces `PrefixCache.match` returned (each [layers, 2, heads, tokens, dim])."""
    out, total = [], 0
    for p in pieces:
        take = min(p.shape[3], n - total)
        if take <= 0:
            break
        out.append(p[:, :, :, :take])
        total += take
    return out
