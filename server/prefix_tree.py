"""One replica's prefix cache as a tree of blocks, rebuilt from its KV events (server.kv_events).

Pure data: feed it batches in order (`apply`), read a `snapshot` for a view. A node is a full block,
keyed by its hash; its parent is the block before it in the prompt. BlockStored adds (or revives)
a chain, BlockRemoved marks blocks evicted, AllBlocksCleared empties the tree.

Evicted blocks stay in the tree, marked dead, so a view can show what was lost, at most
`keep_evicted` of them (the oldest dead go first). A block whose parent the tree never saw (it was
stored before this subscriber joined and is gone from the replay buffer) is an orphan: a root
of its own, at depth 0.

Hits: vLLM's events say which blocks were stored and removed, never which were reused by a later
prompt, and our engine publishes the same events; so `hits` is None ("not known") everywhere. What
the events do tell is `stored`: how many times a block was stored, more than once when it was
computed again after an eviction.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

from server.kv_events import MEDIUM_GPU, AllBlocksCleared, BlockHash, BlockRemoved, BlockStored, EventBatch


def hash_label(h: BlockHash) -> str:
    """A short stable name for a hash: 16 hex digits for an int (as unsigned 64-bit), hex for bytes."""
    return f"{h & (2**64 - 1):016x}" if isinstance(h, int) else h.hex()


@dataclass
class _Node:
    parent: BlockHash | None
    token_ids: tuple[int, ...]
    first_ts: float
    alive: bool = True
    stored: int = 1
    removed: int = 0


@dataclass(frozen=True)
class NodeView:
    hash: str  # hash_label
    parent: str | None  # None: a root (the prompt's first block, or an orphan)
    depth: int  # 0 for a root
    token_ids: tuple[int, ...]
    alive: bool
    stored: int  # times stored (more than once: computed again after an eviction)
    removed: int
    text: str | None = None  # the tokens' text, when the snapshot was given a detokenizer
    hits: int | None = None  # never known from KV events


@dataclass(frozen=True)
class TreeSnapshot:
    nodes: tuple[NodeView, ...]  # depth first, roots and siblings in the order they were first stored
    alive: int  # blocks cached now
    evicted: int  # dead blocks kept for the view
    block_size: int
    batches: int  # event batches applied
    stored_blocks: int  # blocks named by BlockStored events, all told
    removed_blocks: int
    clears: int  # AllBlocksCleared events
    last_ts: float  # the newest batch's time (Unix seconds), 0 before any


class PrefixTree:
    def __init__(self, medium: str | None = MEDIUM_GPU, keep_evicted: int = 4096) -> None:
        """`medium`: the cache tier to follow (vLLM publishes its CPU offload tier on the same
        stream); events without a medium always count."""
        self.medium, self.keep_evicted = medium, keep_evicted
        self._nodes: dict[BlockHash, _Node] = {}
        self._dead: OrderedDict[BlockHash, None] = OrderedDict()  # oldest eviction first
        self.block_size = 0
        self.batches = self.stored_blocks = self.removed_blocks = self.clears = 0
        self.last_ts = 0.0

    def __len__(self) -> int:
        return len(self._nodes) - len(self._dead)

    def __contains__(self, block_hash: BlockHash) -> bool:
        node = self._nodes.get(block_hash)
        return node is not None and node.alive

    def apply(self, batch: EventBatch) -> None:
        for event in batch.events:
            if isinstance(event, AllBlocksCleared):
                self.clear()
            elif event.medium not in (None, self.medium):
                continue
            elif isinstance(event, BlockStored):
                self._stored(event, batch.ts)
            elif isinstance(event, BlockRemoved):
                self._removed(event.block_hashes)
        self.batches += 1
        self.last_ts = batch.ts

    def clear(self) -> None:
        """Forget every block (AllBlocksCleared, or a publisher that restarted)."""
        self._nodes.clear()
        self._dead.clear()
        self.clears += 1

    def _stored(self, event: BlockStored, ts: float) -> None:
        hashes = event.block_hashes
        self.block_size = event.block_size or self.block_size
        per = len(event.token_ids) // len(hashes) if hashes else 0  # block_size, unless vLLM hashed finer
        parent = event.parent_block_hash
        for i, h in enumerate(hashes):
            tokens = tuple(event.token_ids[i * per:(i + 1) * per])
            node = self._nodes.get(h)
            if node is None:
                self._nodes[h] = _Node(parent, tokens, ts)
            else:
                if not node.alive:
                    del self._dead[h]
                node.parent, node.token_ids, node.alive = parent, tokens, True
                node.stored += 1
            parent = h
        self.stored_blocks += len(hashes)

    def _removed(self, hashes: Sequence[BlockHash]) -> None:
        for h in hashes:
            node = self._nodes.get(h)
            if node is None or not node.alive:
                continue
            node.alive = False
            node.removed += 1
            self._dead[h] = None
        self.removed_blocks += len(hashes)
        while len(self._dead) > self.keep_evicted:
            h, _ = self._dead.popitem(last=False)
            del self._nodes[h]

    def snapshot(self, detokenize: Callable[[list[int]], str] | None = None) -> TreeSnapshot:
        """Every node, depth first; each one's text too if `detokenize` is given."""
        children: dict[BlockHash | None, list[BlockHash]] = {}
        for h, node in self._nodes.items():  # insertion order: first stored first
            parent = node.parent if node.parent in self._nodes else None
            children.setdefault(parent, []).append(h)
        views: list[NodeView] = []
        stack = [(h, 0) for h in reversed(children.get(None, []))]
        while stack:
            h, depth = stack.pop()
            node = self._nodes[h]
            parent = node.parent if depth else None
            text = detokenize(list(node.token_ids)) if detokenize is not None else None
            views.append(NodeView(hash_label(h), None if parent is None else hash_label(parent), depth,
                                  node.token_ids, node.alive, node.stored, node.removed, text))
            stack.extend((c, depth + 1) for c in reversed(children.get(h, [])))
        return TreeSnapshot(tuple(views), len(self), len(self._dead), self.block_size, self.batches,
                            self.stored_blocks, self.removed_blocks, self.clears, self.last_ts)


@dataclass(frozen=True)
class Segment:
    """A run of blocks with no branch inside and one state (cached or evicted): what a view draws as
    one bar. The tree of segments is the radix tree of the prompts the cache holds."""

    id: str  # its first block's hash label
    parent: str | None  # the segment it continues, None for a root
    depth: int  # segments above it
    start: int  # its first block's position in the prompt, in blocks
    blocks: int
    token_ids: tuple[int, ...]
    alive: bool
    stored: int  # the most times one of its blocks was stored (> 1: recomputed after an eviction)
    last: str  # its last block's hash label


def segments(snap: TreeSnapshot, limit: int = 400) -> tuple[list[Segment], int]:
    """The tree of `snap` with chains joined, depth first; at most `limit` segments (evicted ones
    are dropped first, then the deepest-listed), and how many were left out."""
    children: dict[str | None, list[NodeView]] = {}
    for n in snap.nodes:
        children.setdefault(n.parent, []).append(n)
    out: list[Segment] = []
    stack: list[tuple[NodeView, str | None, int, int]] = [(n, None, 0, 0) for n in reversed(children.get(None, []))]
    while stack:
        first, parent, depth, start = stack.pop()
        chain = [first]
        while len(kids := children.get(chain[-1].hash, [])) == 1 and kids[0].alive == first.alive:
            chain.append(kids[0])
        tokens = tuple(t for n in chain for t in n.token_ids)
        out.append(Segment(first.hash, parent, depth, start, len(chain), tokens, first.alive,
                           max(n.stored for n in chain), chain[-1].hash))
        stack.extend((k, first.hash, depth + 1, start + len(chain))
                     for k in reversed(children.get(chain[-1].hash, [])))
    if len(out) <= limit:
        return out, 0
    # a child is listed after its parent: one pass keeps whole paths from the roots
    alive = sum(s.alive for s in out)
    room_dead = max(0, limit - alive)
    kept: list[Segment] = []
    ids: set[str] = set()
    for s in out:
        if len(kept) >= limit or (s.parent is not None and s.parent not in ids):
            continue
        if not s.alive:
            if room_dead <= 0:
                continue
            room_dead -= 1
        kept.append(s)
        ids.add(s.id)
    return kept, len(out) - len(kept)
