"""examples/fmnist_results.py on two tiny training runs: its tables carry the runs' reported values and
the intervals of ``compat.comparison.compare_runs``, and seeds that did not finish are left out."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from compat.comparison import compare_runs
from compat.markdown import pct, pp
from tests.cli_runs import TINY, train_recipe_text
from tests.paths import EXAMPLES


def _module():
    spec = importlib.util.spec_from_file_location("fmnist_results", EXAMPLES / "fmnist_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """RUNS with fmnist-independent-s0 and fmnist-cores-s0 (two seeds of the tiny CoReS recipe), and an
    unfinished fmnist-cores-s1 (no report)."""
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("independent", 3), ("cores", 4)):
        work = tmp_path_factory.mktemp(name)
        result, out = train_recipe_text(work, TINY.replace("seed: 3", f"seed: {seed}"))
        assert result.exit_code == 0, result.output
        shutil.copytree(out, root / f"fmnist-{name}-s0")
    (root / "fmnist-cores-s1" / "features").mkdir(parents=True)
    return root


def _rows(lines: list[str]) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_growth_table_reads_the_reports_and_skips_unfinished_seeds(runs):
    results = _module()
    report = json.loads((runs / "fmnist-cores-s0" / "compat.json").read_text())
    independent = json.loads((runs / "fmnist-independent-s0" / "compat.json").read_text())

    def reference(recipe, seed, metric):
        return None if recipe == "independent" else independent["metrics"][metric][1][1]

    rows = _rows(results.chain_table(runs, ["independent", "cores", "l2"], [0, 1], reference))
    assert [r[:2] for r in rows] == [["`fmnist-independent`", "0"], ["`fmnist-cores`", "0"]]  # l2: no run, s1: no report
    cores = rows[1]
    m, g = report["metrics"]["cmc@1"], report["metrics"]["map"]
    assert cores[2:8] == [pct(m[0][0]), pct(m[1][0]), pct(m[1][1]), pct(g[0][0]), pct(g[1][0]), pct(g[1][1])]
    want_gain = (m[1][0] - m[0][0]) / (independent["metrics"]["cmc@1"][1][1] - m[0][0])
    assert cores[10] == f"{want_gain:.2f}" and rows[0][10] == "n/a"
    passed = report["summary"]["cmc@1"]["ecc"][1][0]
    assert cores[12] == ("1/1" if passed else "0/1")


def test_versus_table_gives_compare_runs_intervals(runs):
    results = _module()
    rows = _rows(results.versus_table(runs, "independent", ["cores", "hoc"], [0, 1], 0, 200))
    assert len(rows) == 1 and rows[0][0] == "`cores`" and rows[0][5] == "0"
    want = compare_runs(runs / "fmnist-cores-s0", runs / "fmnist-independent-s0", metrics=("cmc@1", "map"),
                        versions={"v0": "v0", "v1": "v1"}, n_resamples=200, progress=False)
    new_old = next(c for c in want.cells if c.metric == "cmc@1" and c.cell_a == ("v1", "v0")).difference
    assert rows[0][1] == f"{pp(new_old.value)} [{pp(new_old.low)}, {pp(new_old.high)}]"
    assert rows[0][6] == pp(new_old.value)  # one seed: the mean difference is that seed's
    assert (runs / "compare" / "cores-vs-independent-s0" / "compare.json").is_file()


def test_the_class_split_averages_back_to_the_reported_cells(runs):
    results = _module()
    rows = _rows(results.class_split_table(runs, ["cores"], 0))
    report = json.loads((runs / "fmnist-cores-s0" / "compat.json").read_text())
    labels = np.load(runs / "fmnist-cores-s0" / "features" / "v0.npz")["labels"]
    n_seen = int((labels < 5).sum())
    for k, (i, j) in enumerate(((0, 0), (1, 0), (1, 1))):
        seen, unseen = (float(v) for v in rows[0][1 + k].split(" / "))
        whole = (n_seen * seen + (len(labels) - n_seen) * unseen) / len(labels)
        assert whole == pytest.approx(100 * report["metrics"]["cmc@1"][i][j], abs=0.01)
