"""The offline demo: why a compatible model can replace the old one without backfilling the gallery.

On the MNIST subset that ships with the package (``mnist-mini``), :func:`run_demo` trains the chain
of the recipe ``compat/demo.yaml``:

* an **old** model on a seeded, class-stratified fraction of the training images (production),
* an **independent** new model on all of them, with no compatibility constraint, and
* a **compatible** new model on all of them (CoReS: the fixed d-Simplex classifier; or BCT),

evaluates the two chains ``old -> independent`` and ``old -> compatible`` on the 1,000 test
images (leave-one-out) and runs the CI gate with the default policy on each candidate. Layout
under ``out``::

    out/train/                      the training run: recipe.yaml, v0/ (old), v1/ (compatible),
                                    v1-independent/, features/*.npz and that run's own report
    out/independent/                compat.json, compat.md, compat.png, gate.json, gate.md
    out/compatible/                 the same for the compatible model

Everything is seeded: the same seed, device and settings give the same reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compat.compatibility.matrix import CompatibilityReport
from compat.errors import CompatError
from compat.gate.bootstrap import min_resamples
from compat.gate.decide import CheckResult, GateVerdict
from compat.gate.policy import Bound, CheckKind
from compat.markdown import pct

__all__ = ["DEMO_METHODS", "DemoChain", "DemoResult", "DemoSettings", "render_text", "run_demo"]

DEMO_METHODS = ("cores", "bct")
DEMO_RECIPE = Path(__file__).with_name("demo.yaml")
# The compatible model's feature size per method; the independent model shares the compatible
# model's architecture, so that each gate compares like with like.
_FEATURE_DIM = {"cores": 9, "bct": 128}
_TITLE = {"cores": "CoReS (d-Simplex)", "bct": "BCT"}


@dataclass(frozen=True)
class DemoSettings:
    """How much the demo trains: changes to its recipe (``compat/demo.yaml``). ``None`` keeps the
    recipe's value; the defaults are what ``compat demo`` runs.

    Args:
        method: the compatible model's method, ``cores`` or ``bct``.
        old_fraction: share of the 5,000 training images the old model sees (recipe: 0.3).
        new_fraction: share the two new models see, nested: it contains the old model's images (1.0).
        epochs: epochs of each of the three models (3).
        batch_size, lr: SGD with Nesterov momentum and a cosine schedule (64, 0.05).
        n_resamples: bootstrap resamples per gate check.
    """

    method: str = "cores"
    old_fraction: float | None = None
    new_fraction: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    n_resamples: int = 2000

    def recipe(self, seed: int):
        """The training recipe of the demo's chain (a validated :class:`compat.train.Recipe`)."""
        from compat.configfile import read_yaml_mapping, validate_model
        from compat.train.config import Recipe

        if self.method not in DEMO_METHODS:
            raise CompatError(f"method: unknown demo method {self.method!r}; expected one of {', '.join(DEMO_METHODS)}")
        raw = read_yaml_mapping(DEMO_RECIPE, "recipe")
        raw["seed"] = seed
        if self.method != raw["method"]["name"]:
            raw.update(name=f"demo-{self.method}", method={"name": self.method})
            raw["model"]["feature_dim"] = _FEATURE_DIM[self.method]
        old, new = raw["data"]["fractions"]
        old, new = self.old_fraction or old, self.new_fraction or new
        if not 0 < old < new <= 1:
            raise CompatError(f"old_fraction, new_fraction: expected 0 < old_fraction < new_fraction <= 1, got "
                              f"{old} and {new}")
        raw["data"]["fractions"] = [old, new]
        for name, value, low in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 2),
                                 ("n_resamples", self.n_resamples, min_resamples(0.95))):  # the default policy's level
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise CompatError(f"{name}: expected an integer >= {low}, got {value!r}")
        if self.lr is not None and not self.lr > 0:
            raise CompatError(f"lr: expected a positive learning rate, got {self.lr}")
        raw["train"].update({k: v for k, v in (("epochs", self.epochs), ("batch_size", self.batch_size),
                                               ("lr", self.lr)) if v is not None})
        return validate_model(Recipe, raw, f"demo settings ({DEMO_RECIPE.name})")


@dataclass(frozen=True)
class DemoChain:
    """One chain of the demo: the old model followed by one candidate.

    Attributes:
        name: ``independent`` or ``compatible`` (also the directory of its reports).
        title: how the candidate is printed.
        report: the chain's compatibility matrices (versions ``old``, ``new``).
        verdict: the gate's decision on the candidate, default policy.
        directory: where its five report files are.
    """

    name: str
    title: str
    report: CompatibilityReport
    verdict: GateVerdict
    directory: Path


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` measured, and where it wrote it."""

    out: Path
    seed: int
    settings: DemoSettings
    recipe: Any  # the validated compat.train.Recipe the chain was trained with
    independent: DemoChain
    compatible: DemoChain
    seconds: float

    @property
    def chains(self) -> tuple[DemoChain, DemoChain]:
        return self.independent, self.compatible

    @property
    def as_expected(self) -> bool:
        """The gate refuses the independent model and lets the compatible one through."""
        return not self.independent.verdict.passed and self.compatible.verdict.passed


def run_demo(
    out: str | Path = "compat-demo",
    *,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    settings: DemoSettings | None = None,
    echo: Callable[[str], None] | None = None,
) -> DemoResult:
    """Train the three models, evaluate both chains, gate both candidates and write the reports.

    Args:
        out: output directory (layout in the module docstring); created if needed.
        seed: seeds the data split, the models, the training order and the gate's bootstrap.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        progress: show training progress bars.
        settings: training budget and method (default: :class:`DemoSettings`, what the CLI runs).
        echo: called with a line of text at each stage (e.g. ``print``); default silent.

    Returns:
        The reports and verdicts of both chains.

    Raises:
        CompatError: bad settings, device or output directory.
    """
    from compat._files import check_output_dir
    from compat.device import resolve_device
    from compat.train import train_chain

    settings = settings or DemoSettings()
    say = echo or (lambda _line: None)
    recipe = settings.recipe(seed)
    device = resolve_device(device)
    out = check_output_dir(out)
    started = time.perf_counter()
    old_fraction, new_fraction = recipe.data.fractions
    say(
        f"training on {recipe.data.dataset} ({device}): the old model on {old_fraction:.0%} of the training images, "
        f"an independent and a {_TITLE[settings.method]} new model on {new_fraction:.0%}, {recipe.train.epochs} "
        "epoch(s) each"
    )
    train_dir = out / "train"
    try:
        train_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompatError(f"--out {out}: cannot create the output directory ({exc.strerror or exc})") from None
    train_chain(recipe, out=train_dir, device=device, progress=progress)
    say("evaluating both chains on the test images (leave-one-out) and gating both candidates")
    independent, compatible = _evaluate_and_gate(recipe, settings, out, seed=seed, device=device)
    return DemoResult(out, seed, settings, recipe, independent, compatible, time.perf_counter() - started)


def _evaluate_and_gate(recipe, settings: DemoSettings, out: Path, *, seed: int,
                       device: str) -> tuple[DemoChain, DemoChain]:
    """Both chains (old -> independent, old -> compatible) evaluated, gated and reported under ``out``."""
    from compat.compatibility.matrix import Version, evaluate_chain
    from compat.compatibility.report import write_reports
    from compat.features import load_features
    from compat.gate import load_policy, run_gate
    from compat.gate import write_reports as write_gate_reports
    from compat.retrieval.evaluator import RetrievalEvaluator
    from compat.train import build_evaluator

    features = out / "train" / "features"
    old = load_features(features / "v0.npz")
    independent = load_features(features / "v1-independent.npz")
    compatible = load_features(features / "v1.npz")
    policy = load_policy(None)
    evaluator = build_evaluator(recipe.eval, device, progress=False)
    gate_evaluator = RetrievalEvaluator(policy.metrics, device=device)
    chains = []
    for name, chain_title, new, reference in (
        ("independent", "independent", independent, None),
        ("compatible", _TITLE[settings.method], compatible, independent),
    ):
        report = evaluate_chain([Version("old", old), Version("new", new)], evaluator, independent=reference)
        # The independent model is the update gain's reference: its own gain is not measured.
        verdict = run_gate(old, new, policy, independent=reference, evaluator=gate_evaluator,
                           n_resamples=settings.n_resamples, seed=seed)
        directory = out / name
        write_reports(report, directory)
        write_gate_reports(verdict, directory)
        chains.append(DemoChain(name, chain_title, report, verdict, directory))
    return chains[0], chains[1]


# ---------------------------------------------------------------- printing


def _matrix_lines(chain: DemoChain, metric: str) -> list[str]:
    report = chain.report
    matrix, ecc = report.matrices[metric], report.summary[metric].ecc
    names = report.versions
    lines = ["query \\ gallery " + "".join(f"{n:>10}" for n in names)]
    for i, row_name in enumerate(names):
        cells = []
        for j in range(len(names)):
            if j > i:
                cells.append(f"{'–':>10}")
                continue
            mark = "" if j == i or ecc[i][j] is None else (" ✓" if ecc[i][j] else " ✗")
            cells.append(f"{pct(matrix[i][j]) + mark:>10}")
        lines.append(f"{row_name:<16}" + "".join(cells))
    return lines


def _side_by_side(blocks: list[list[str]], gap: int = 6) -> list[str]:
    widths = [max(len(line) for line in block) for block in blocks]
    rows = max(len(block) for block in blocks)
    out = []
    for r in range(rows):
        parts = [(block[r] if r < len(block) else "").ljust(w) for block, w in zip(blocks, widths, strict=True)]
        out.append((" " * gap).join(parts).rstrip())
    return out


def _value(check: CheckResult, x: float | None) -> str:
    """Differences of fractions in signed percentage points, gains as ratios."""
    if x is None:
        return "n/a"
    return f"{x:.3f}" if check.kind is CheckKind.UPDATE_GAIN else f"{100 * x:+.2f}"


def _unit(check: CheckResult) -> str:
    return "" if check.kind is CheckKind.UPDATE_GAIN else " pp"


def _check_cell(check: CheckResult) -> str:
    if check.skipped:
        return "skipped"
    mark = "✓" if check.passed else "✗"
    interval = f"[{_value(check, check.ci_low)}, {_value(check, check.ci_high)}]"
    return f"{_value(check, check.value)} {interval}{_unit(check)} {mark}"


def _rule(check: CheckResult) -> str:
    side = "low" if check.rule.bound is Bound.LOW else "high"
    text = f"{side} {check.rule.op} {_value(check, check.threshold)}{_unit(check)}"
    return text if check.required else text + " (not required)"


def _gate_lines(chains: tuple[DemoChain, ...]) -> list[str]:
    rows = [["check", "metric", "passes when", *(f"{c.title} candidate" for c in chains)]]
    for k, check in enumerate(chains[0].verdict.checks):
        rows.append([check.name, check.metric, _rule(check), *(_check_cell(c.verdict.checks[k]) for c in chains)])
    rows.append(["verdict", "", "", *("PASSED ✓" if c.verdict.passed else "FAILED ✗" for c in chains)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def render_text(result: DemoResult) -> str:
    """What ``compat demo`` prints: the two chains' matrices side by side, then both gate verdicts."""
    chains = result.chains
    lines = [
        (f"compat demo · {result.recipe.data.dataset} · seed {result.seed} · leave-one-out on the test images · "
         "values in %"),
        "(rows: query model, columns: gallery model; ✓ / ✗: beats / does not beat the old model on its own gallery)",
        "",
    ]
    for metric in chains[0].report.metrics:
        headers = [[f"{metric}: old -> {c.title} new model"] for c in chains]
        blocks = [h + _matrix_lines(c, metric) for h, c in zip(headers, chains, strict=True)]
        lines += [*_side_by_side(blocks), ""]
    lines += [
        "gate, default policy: value [95% paired bootstrap interval over queries]; low / high: the interval's bounds",
        *_gate_lines(chains),
        "",
    ]
    for chain in chains:
        lines.append(f"{chain.title}: reports in {chain.directory}/ (compat.json, compat.md, compat.png, gate.json, "
                     "gate.md)")
    lines.append(f"models and features: {result.out / 'train'}/")
    return "\n".join(lines) + "\n"

