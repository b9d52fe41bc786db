"""Splitting a gallery between ranks: the parts and the merge of the ranks' top-k lists (the
evaluation on several ranks itself: tests/test_distributed.py)."""

from __future__ import annotations

import numpy as np

from compat.retrieval.sharding import merge_topk
from compat.sharded import partition_rows


def test_partition_follows_shard_boundaries_and_balances_rows():
    offsets = np.array([0, 37, 42, 162, 223, 300])
    assert partition_rows(300, 3).tolist() == [0, 100, 200, 300]
    assert partition_rows(300, 2, offsets).tolist() == [0, 162, 300]
    assert partition_rows(300, 3, offsets).tolist() == [0, 42, 223, 300]


def test_merge_orders_by_score_then_global_index():
    s = [np.array([[0.9, 0.5, np.nan]]), np.array([[0.9, 0.7, 0.1]])]
    i = [np.array([[8, 2, -1]]), np.array([[3, 11, 12]])]
    ms, mi = merge_topk(s, i, 4)
    assert mi.tolist() == [[3, 8, 11, 2]] and ms.tolist() == [[0.9, 0.9, 0.7, 0.5]]
