"""BlockManager: refcounts, the prefix cache (keys chained over full blocks), eviction order."""
from __future__ import annotations

import pytest

from dsa.engine.block_manager import BlockManager, OutOfBlocksError, block_key

PAGE = 4


def _computed(bm: BlockManager, tokens: list[int]) -> list[int]:
    """A request that computed all of `tokens`: its blocks, with the full ones committed."""
    blocks = bm.allocate(bm.blocks_for(len(tokens)))
    bm.commit(tokens, blocks, len(tokens), 0)
    return blocks


def test_refcounts_and_double_free():
    bm = BlockManager(6, PAGE)
    a = bm.allocate(2)
    assert a == [0, 1] and bm.num_free == 4 and bm.usage == pytest.approx(2 / 6)
    bm.take(a)  # a second user
    bm.free(a)
    assert bm.num_free == 4  # still held once
    bm.free(a)
    assert bm.num_free == 6 and bm.usage == 0
    with pytest.raises(ValueError, match="double free"):
        bm.free([0])


def test_out_of_blocks_changes_nothing():
    bm = BlockManager(3, PAGE)
    bm.allocate(2)
    with pytest.raises(OutOfBlocksError, match="only 1 of 3"):
        bm.allocate(2)
    assert bm.num_free == 1


def test_keys_chain_the_whole_prefix():
    assert block_key(None, [1, 2, 3, 4]) == block_key(None, [1, 2, 3, 4])
    assert block_key(None, [1, 2, 3, 4]) != block_key(None, [1, 2, 3, 5])
    # the same block tokens after a different prefix is a different key
    assert block_key(block_key(None, [9, 9, 9, 9]), [1, 2, 3, 4]) != block_key(block_key(None, [8, 9, 9, 9]),
                                                                              [1, 2, 3, 4])
    assert block_key(None, [1, 23]) != block_key(None, [12, 3])  # separators: no ambiguity


def test_prefix_hit_reuses_full_blocks_and_leaves_the_last_token():
    bm = BlockManager(8, PAGE)
    first = list(range(10, 20))  # 10 tokens: 2 full blocks + 2
    blocks = _computed(bm, first)
    assert bm.match_prefix(first + [99, 98]) == blocks[:2]
    assert bm.match_prefix(first[:8]) == blocks[:1]  # 8 tokens: the last must be computed, so 1 block
    assert bm.match_prefix(first[:9]) == blocks[:2]
    assert bm.match_prefix([10, 11, 12, 0, 14]) == []  # differs inside the first block
    assert bm.match_prefix(first[:4] + [0, 0, 0, 0, 1]) == blocks[:1]  # differs in the second


def test_partial_block_is_never_shared():
    bm = BlockManager(8, PAGE)
    tokens = [5, 6, 7, 8, 9, 10]
    _computed(bm, tokens)
    assert len(bm.match_prefix(tokens + [1])) == 1  # only the one full block


def test_freed_cached_blocks_stay_reusable_then_are_evicted_oldest_first():
    bm = BlockManager(4, PAGE)
    a = _computed(bm, [1] * 8)  # blocks 0, 1 keyed
    bm.free(a)
    assert bm.num_free == 4 and bm.usage == 0  # cached but unused counts as free
    hit = bm.match_prefix([1] * 9)
    assert hit == a
    b = bm.allocate(2)  # the 2 never-used blocks go first
    assert sorted(b) == [2, 3] and bm.match_prefix([1] * 9) == a
    c = bm.allocate(1)  # now an evictable one: the request's tail block (freed first) goes before its head
    assert c == [a[1]]
    assert bm.match_prefix([1] * 9) == a[:1]


def test_take_protects_a_cached_block_from_eviction():
    bm = BlockManager(2, PAGE)
    a = _computed(bm, [3] * 8)
    bm.free(a)
    bm.take(a[:1])
    assert bm.num_free == 1
    got = bm.allocate(1)
    assert got == [a[1]]
    with pytest.raises(OutOfBlocksError):
        bm.allocate(1)


def test_duplicate_prefix_stays_private():
    bm = BlockManager(6, PAGE)
    a = _computed(bm, [4] * 8)
    b = _computed(bm, [4] * 8)  # computed again (e.g. admitted before a committed): not keyed twice
    bm.free(b)
    assert bm.num_free == 6 - 2  # b's blocks went back as fresh, a still holds its two
    assert bm.match_prefix([4] * 9) == a


def test_commit_after_a_private_predecessor_keeps_the_chain():
    bm = BlockManager(8, PAGE)
    _computed(bm, [4] * 4)  # block 0 keyed for [4]*4
    b = bm.allocate(2)
    bm.commit([4] * 4 + [5] * 4, b, 4, 0)  # b[0] duplicates the cached prefix: private
    bm.commit([4] * 4 + [5] * 4, b, 8, 1)  # b[1] is keyed with the content chain
    assert bm.match_prefix([4] * 4 + [5] * 4 + [6]) == [0, b[1]]


def test_disabled_prefix_caching():
    bm = BlockManager(4, PAGE, enable_prefix_caching=False)
    a = _computed(bm, [1] * 8)
    assert bm.match_prefix([1] * 9) == []
    bm.free(a)
    assert bm.num_free == 4


def test_reset_prefix_cache():
    bm = BlockManager(4, PAGE)
    bm.free(_computed(bm, [1] * 8))
    bm.reset_prefix_cache()
    assert bm.match_prefix([1] * 9) == [] and bm.num_free == 4


def test_hit_rate():
    bm = BlockManager(4, PAGE)
    assert bm.hit_rate == 0.0
    bm.record_query(10, 8)
    bm.record_query(10, 0)
    assert bm.hit_rate == pytest.approx(0.4)
