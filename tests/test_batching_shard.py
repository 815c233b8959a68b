"""fundl.data.batches(shard=...): the sharding of global batches for data-parallel training."""

import numpy as np
import pytest

from fundl import random
from fundl.data import batches
from fundl.data.batching import shard_range
from fundl.testing import read_only


def _data(n):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n, dtype=np.int64)
    return read_only(x), read_only(y)


@pytest.mark.parametrize("n,size", [(10, 1), (10, 3), (2, 3), (0, 2), (7, 7), (256, 3)])
def test_shard_range_parts_are_disjoint_ordered_and_cover(n, size):
    parts = [shard_range(n, r, size) for r in range(size)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(parts[r][1] == parts[r + 1][0] for r in range(size - 1))
    lengths = [hi - lo for lo, hi in parts]
    assert max(lengths) - min(lengths) <= 1 and sum(lengths) == n


def test_shard_range_values():
    assert [shard_range(256, r, 3) for r in range(3)] == [(0, 85), (85, 170), (170, 256)]
    assert [shard_range(1, r, 3) for r in range(3)] == [(0, 0), (0, 0), (0, 1)]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n,batch,size,drop_last", [(10, 4, 3, False), (11, 5, 2, False),
                                                     (10, 4, 3, True), (9, 3, 3, False)])
def test_union_of_rank_parts_is_exactly_the_global_batch(shuffle, n, batch, size, drop_last):
    x, y = _data(n)
    k = random.key(3)
    whole = list(batches(k, (x, y), batch, shuffle=shuffle, drop_last=drop_last))
    per_rank = [list(batches(k, (x, y), batch, shuffle=shuffle, drop_last=drop_last,
                             shard=(r, size))) for r in range(size)]
    assert all(len(p) == len(whole) for p in per_rank)      # same number of steps everywhere
    for b, (xb, yb) in enumerate(whole):
        ys = np.concatenate([p[b][1] for p in per_rank])
        xs = np.concatenate([p[b][0] for p in per_rank])
        np.testing.assert_array_equal(ys, yb)                # same examples, same order
        np.testing.assert_array_equal(xs, xb)
        assert sorted(len(p[b][1]) for p in per_rank)[-1] - \
            sorted(len(p[b][1]) for p in per_rank)[0] <= 1


def test_rank_with_no_examples_gets_empty_arrays_of_the_right_shape():
    x, y = _data(7)                       # batches of 3: 3, 3, 1; the last over 3 ranks: 0, 0, 1
    parts = [list(batches(None, (x, y), 3, shuffle=False, shard=(r, 3))) for r in range(3)]
    assert [len(p[-1][0]) for p in parts] == [0, 0, 1]
    assert parts[0][-1][0].shape == (0, 2) and parts[0][-1][1].dtype == np.int64
    np.testing.assert_array_equal(parts[2][-1][1], [6])
    single = list(batches(None, x, 3, shuffle=False, shard=(1, 3)))   # one bare array
    assert [b.shape for b in single] == [(1, 2), (1, 2), (0, 2)]


def test_unshuffled_shards_are_views():
    x, y = _data(8)
    xb, _ = next(batches(None, (x, y), 8, shuffle=False, shard=(1, 2)))
    assert np.shares_memory(xb, x)
    np.testing.assert_array_equal(xb, x[4:8])


@pytest.mark.parametrize("bad", [(2, 2), (-1, 2), (0, 0), (1,), "ab", (0.0, 2), (True, 2)])
def test_bad_shard_is_a_clear_error(bad):
    x, y = _data(4)
    with pytest.raises(ValueError, match="shard must be a pair"):
        batches(random.key(0), (x, y), 2, shard=bad)
