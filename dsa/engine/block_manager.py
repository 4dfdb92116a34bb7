"""The KV block manager: refcounted cache blocks, and the prefix cache over them.

One block holds `page_size` consecutive positions of one sequence in every layer's latent cache and
index-key cache (dsa.model.cache.PagedCache), so both are shared or freed together. A block that is full
gets a key: the hash of its tokens chained with its predecessor's key, so equal keys mean equal whole
prefixes (sha256: a collision is not a practical concern). The cache rows of a full block depend only on
that prefix - the latent rows, and the indexer's keys, which are computed per token from the same hidden
states - so a new request whose prompt starts with the same full blocks reuses them and skips computing
them.

A block with no user is kept, with its key, in an LRU list of evictable blocks; it is reused as is on a
prefix hit, or cleared and handed out when a free block is needed and no never-used one is left.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Optional, Sequence

from dsa.errors import DsaError


class OutOfBlocksError(DsaError):
    """No free cache block is left (the scheduler preempts before it would happen)."""


def block_key(parent: Optional[bytes], tokens: Sequence[int]) -> bytes:
    """The prefix-cache key of a full block: sha256(parent key, its token ids)."""
    h = hashlib.sha256(parent or b"")
    h.update(b",".join(str(t).encode() for t in tokens))
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, page_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or page_size < 1:
            raise ValueError(f"num_blocks and page_size must be >= 1, got {num_blocks}, {page_size}")
        self.num_blocks, self.page_size = num_blocks, page_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref = [0] * num_blocks
        self.key_of: list[Optional[bytes]] = [None] * num_blocks
        self.block_of: dict[bytes, int] = {}  # key -> block holding that prefix
        self._fresh = list(range(num_blocks - 1, -1, -1))  # never used (or cleared); pop() gives low ids first
        self._evictable: OrderedDict[int, None] = OrderedDict()  # unused but keyed, oldest first
        self.queries = 0  # prompt tokens looked up in the prefix cache
        self.hits = 0  # of those, tokens found

    # ---- accounting ---------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (never used, or evictable cached ones)."""
        return len(self._fresh) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def usage(self) -> float:
        """Share of the blocks held by requests (cached-but-unused blocks count as free)."""
        return self.num_used / self.num_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    # ---- prefix cache -------------------------------------------------------------------------------
    def keys(self, token_ids: Sequence[int], upto: int) -> list[bytes]:
        """Keys of the full blocks among the first `upto` tokens."""
        keys, parent = [], None
        for start in range(0, upto - self.page_size + 1, self.page_size):
            parent = block_key(parent, token_ids[start:start + self.page_size])
            keys.append(parent)
        return keys

    def match_prefix(self, token_ids: Sequence[int]) -> list[int]:
        """The cached blocks that hold the longest run of full leading blocks of `token_ids`, leaving at least
        the last token to compute (its logits are needed). Looks only; `take` claims them."""
        if not self.enable_prefix_caching:
            return []
        found = []
        for key in self.keys(token_ids, len(token_ids) - 1):
            block = self.block_of.get(key)
            if block is None:
                break
            found.append(block)
        return found

    def record_query(self, tokens: int, hit_tokens: int) -> None:
        self.queries += tokens
        self.hits += hit_tokens

    def take(self, blocks: Sequence[int]) -> None:
        """Claim cached blocks found by match_prefix (one more user each)."""
        for b in blocks:
            if self.ref[b] == 0:
                self._evictable.pop(b, None)
            self.ref[b] += 1

    def commit(self, token_ids: Sequence[int], blocks: Sequence[int], num_computed: int,
               first_uncommitted: int) -> int:
        """Key the blocks that became full and computed (blocks [first_uncommitted, num_computed // page)), so
        later requests can reuse them; returns the new count of committed blocks. A block whose prefix is
        already cached under another block stays private (it is freed normally)."""
        full = num_computed // self.page_size
        if not self.enable_prefix_caching or full <= first_uncommitted:
            return max(first_uncommitted, full) if self.enable_prefix_caching else full
        parent = self.key_of[blocks[first_uncommitted - 1]] if first_uncommitted else None
        if first_uncommitted and parent is None:  # predecessor stayed private: recompute the chain
            parent = self.keys(token_ids, first_uncommitted * self.page_size)[-1]
        for i in range(first_uncommitted, full):
            key = block_key(parent, token_ids[i * self.page_size:(i + 1) * self.page_size])
            b = blocks[i]
            if key not in self.block_of and self.key_of[b] is None:
                self.block_of[key] = b
                self.key_of[b] = key
            parent = key
        return full

    # ---- allocation ---------------------------------------------------------------------------------
    def allocate(self, n: int) -> list[int]:
        """n blocks for one request (refcount 1), never-used ones first, then the least recently freed
        cached ones (their keys dropped). OutOfBlocksError (nothing changed) when fewer than n are free."""
        if n > self.num_free:
            raise OutOfBlocksError(f"the KV cache needs {n} more block(s) but only {self.num_free} of "
                                   f"{self.num_blocks} are free")
        out = []
        for _ in range(n):
            if self._fresh:
                b = self._fresh.pop()
            else:
                b, _ = self._evictable.popitem(last=False)
                del self.block_of[self.key_of[b]]
                self.key_of[b] = None
            self.ref[b] = 1
            out.append(b)
        return out

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one user of each block; a block nobody uses becomes free (kept as evictable when keyed).
        Freed last-first, so a request's tail blocks are evicted before its head (its head is the prefix
        others are most likely to share)."""
        for b in reversed(blocks):
            if self.ref[b] <= 0:
                raise ValueError(f"block {b} is not allocated (double free?)")
            self.ref[b] -= 1
            if self.ref[b] == 0:
                if self.key_of[b] is not None:
                    self._evictable[b] = None
                else:
                    self._fresh.append(b)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix that no request uses."""
        while self._evictable:
            b, _ = self._evictable.popitem()
            del self.block_of[self.key_of[b]]
            self.key_of[b] = None
            self._fresh.append(b)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


__all__ = ["BlockManager", "block_key", "OutOfBlocksError"]
