"""Leave-one-out over a gallery split between gloo ranks: identical, bit for bit, to one process, with
uneven shards and exact duplicates across shard boundaries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compat.distributed import DistributedContext
from compat.retrieval import RetrievalEvaluator
from compat.retrieval.sharding import merge_topk
from compat.sharded import ShardedArray, partition_rows
from tests.distributed_runs import run_ranks

METRICS = ("cmc@1", "cmc@5", "map", "map@r")
SHARDS = (37, 5, 120, 61, 77)  # uneven, one tiny


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = sum(SHARDS)
    labels = rng.integers(0, 7, n)
    x = (rng.standard_normal((7, 10))[labels] + rng.standard_normal((n, 10))).astype(np.float32)
    edges = np.cumsum(SHARDS)
    for a in edges[:-1]:  # duplicates on both sides of every shard boundary, and far apart
        x[a] = x[a - 1]
        x[a + 2] = x[a - 3]
    x[n - 1] = x[0]
    ids = rng.permutation(n) + 100
    return x, labels, ids


def _sharded(x: np.ndarray) -> ShardedArray:
    return ShardedArray(np.split(x, np.cumsum(SHARDS)[:-1]))


CASES = {2: [("cosine", METRICS), ("l2", ("cmc@1", "cmc@5"))], 3: [("l2", METRICS), ("cosine", ("cmc@1", "cmc@5"))]}


def _evaluate(dist: DistributedContext, out: str) -> None:
    x, labels, ids = _data()
    results = []
    for similarity, metrics in CASES[dist.world_size]:
        ev = RetrievalEvaluator(metrics, device="cpu", similarity=similarity, memory_budget=1 << 20, dist=dist)
        r = ev.evaluate_arrays(x[:150], labels[:150], ids[:150], _sharded(x), labels, ids)
        results.append({"values": r.values, "per_query": {k: v.tolist() for k, v in r.per_query.items()},
                        "counted": r.counted.tolist()})
    with open(f"{out}.{dist.rank}.json", "w") as fh:
        json.dump(results, fh)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_give_the_single_process_result_bit_for_bit(tmp_path, world):
    x, labels, ids = _data()
    run_ranks(world, tmp_path, _evaluate, str(tmp_path / "r"))
    for k, (similarity, metrics) in enumerate(CASES[world]):
        one = RetrievalEvaluator(metrics, device="cpu", similarity=similarity).evaluate_arrays(
            x[:150], labels[:150], ids[:150], x, labels, ids)
        for rank in range(world):
            got = json.loads((tmp_path / f"r.{rank}.json").read_text())[k]
            assert got["values"] == one.values  # every rank returns the merged result
            for name, values in one.per_query.items():
                assert got["per_query"][name] == values.tolist(), name
            assert got["counted"] == one.counted.tolist()


def test_partition_follows_shard_boundaries_and_balances_rows():
    offsets = np.concatenate([[0], np.cumsum(SHARDS)])
    assert partition_rows(300, 3).tolist() == [0, 100, 200, 300]
    cut = partition_rows(int(offsets[-1]), 2, offsets)
    assert set(cut.tolist()) <= set(offsets.tolist()) and cut[0] == 0 and cut[-1] == offsets[-1]
    assert cut.tolist() == [0, 162, 300]


def test_merge_orders_by_score_then_global_index():
    s = [np.array([[0.9, 0.5, np.nan]]), np.array([[0.9, 0.7, 0.1]])]
    i = [np.array([[8, 2, -1]]), np.array([[3, 11, 12]])]
    ms, mi = merge_topk(s, i, 4)
    assert mi.tolist() == [[3, 8, 11, 2]] and ms.tolist() == [[0.9, 0.9, 0.7, 0.5]]
