"""Work split between gloo ranks (2 and 3 processes on CPU) gives what one process gives, bit for bit:
leave-one-out over a sharded gallery (uneven shards, exact duplicates across shard boundaries) and
sharded extraction. Each world size is started once and runs both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compat.distributed import DistributedContext
from compat.errors import CompatError
from compat.features import load_features
from compat.manifest import read_manifest
from compat.retrieval import RetrievalEvaluator
from compat.sharded import ShardedArray
from tests.distributed_runs import run_ranks
from tests.models.test_sharded_extract import extract_mnist_mini, model_file  # noqa: F401 (a fixture)

METRICS = ("cmc@1", "cmc@5", "map", "map@r")
SHARDS = (37, 5, 120, 61, 77)  # uneven, one tiny
CASES = {2: [("cosine", METRICS), ("l2", ("cmc@1", "cmc@5"))], 3: [("l2", METRICS), ("cosine", ("cmc@1", "cmc@5"))]}


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = sum(SHARDS)
    labels = rng.integers(0, 7, n)
    x = (rng.standard_normal((7, 10))[labels] + rng.standard_normal((n, 10))).astype(np.float32)
    for a in np.cumsum(SHARDS)[:-1]:  # duplicates on both sides of every shard boundary, and far apart
        x[a] = x[a - 1]
        x[a + 2] = x[a - 3]
    x[n - 1] = x[0]
    return x, labels, rng.permutation(n) + 100


def _on_each_rank(dist: DistributedContext, out: str, model: str) -> None:
    x, labels, ids = _data()
    gallery = ShardedArray(np.split(x, np.cumsum(SHARDS)[:-1]))
    results = []
    for similarity, metrics in CASES[dist.world_size]:
        ev = RetrievalEvaluator(metrics, device="cpu", similarity=similarity, memory_budget=1 << 20, dist=dist)
        r = ev.evaluate_arrays(x[:150], labels[:150], ids[:150], gallery, labels, ids)
        results.append({"values": r.values, "per_query": {k: v.tolist() for k, v in r.per_query.items()},
                        "counted": r.counted.tolist()})
    zero = x.copy()
    zero[290] = 0  # in the last shard: the rank holding it finds it, every rank raises its message
    try:
        RetrievalEvaluator(METRICS, device="cpu", dist=dist).evaluate_arrays(
            x[:150], labels[:150], ids[:150], ShardedArray(np.split(zero, np.cumsum(SHARDS)[:-1])), labels, ids)
        results.append({"error": None})
    except CompatError as exc:
        results.append({"error": str(exc)})
    Path(f"{out}/eval.{dist.rank}.json").write_text(json.dumps(results))
    extract_mnist_mini(Path(model), Path(out) / "features", dist)


@pytest.fixture(scope="module", params=[2, 3])
def ranks(request, tmp_path_factory, model_file) -> tuple[int, Path]:  # noqa: F811
    out = tmp_path_factory.mktemp(f"ranks{request.param}")
    run_ranks(request.param, out, _on_each_rank, str(out), str(model_file))
    return request.param, out


def test_leave_one_out_on_ranks_is_the_single_process_result(ranks):
    world, out = ranks
    x, labels, ids = _data()
    for k, (similarity, metrics) in enumerate(CASES[world]):
        one = RetrievalEvaluator(metrics, device="cpu", similarity=similarity).evaluate_arrays(
            x[:150], labels[:150], ids[:150], x, labels, ids)
        for rank in range(world):
            got = json.loads((out / f"eval.{rank}.json").read_text())[k]
            assert got["values"] == one.values  # every rank returns the merged result
            for name, values in one.per_query.items():
                assert got["per_query"][name] == values.tolist(), name
            assert got["counted"] == one.counted.tolist()


def test_a_zero_row_on_one_rank_stops_every_rank_with_its_global_row(ranks):
    world, out = ranks
    for rank in range(world):
        got = json.loads((out / f"eval.{rank}.json").read_text())[-1]
        assert got["error"] == "cell (gallery): feature row 290 is all zeros; cosine similarity needs non-zero features"


def test_extraction_on_ranks_writes_the_single_process_shards(ranks, model_file, tmp_path):  # noqa: F811
    _, out = ranks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks ran one thread each
    try:
        one = read_manifest(extract_mnist_mini(model_file, tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    assert read_manifest(out / "features") == one  # rows, checksums and metadata of every shard
    assert load_features(out / "features").n == 1000
