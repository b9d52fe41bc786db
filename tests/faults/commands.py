"""Every ``compat`` command, described once: how a valid call is built, and which inputs it takes.

A fault of the table (:mod:`tests.faults.table`) is a bad value for one kind of input (a slot); it is
run against every command that has that slot. A new command is added here with its slots and
inherits every fault of them, and the two faults every command has (a bug: exit 3; Ctrl-C: 130).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Slot(str, Enum):
    """A kind of input a command takes, and where a fault of that kind goes."""

    FEATURES = "feature set"
    MODEL = "model file"
    ADAPTER = "adapter file"
    RECIPE = "recipe"
    POLICY = "gate policy"
    OUT_DIR = "--out directory"
    OUT_FILE = "--out file"
    OPTION = "option"  # a command-specific bad option or combination (the fault names its command)
    RUN = "while running"  # what happens inside the command (a bug, Ctrl-C); every command has it


@dataclass(frozen=True)
class Inputs:
    """Valid inputs of every kind: a command is built from these, one replaced by a fault's value."""

    features: Path
    other_features: Path
    model: Path
    adapter: Path
    recipe: Path
    policy: Path


@dataclass(frozen=True)
class Command:
    """How to call one command validly, with ``values`` (slot -> value) replacing the valid inputs.

    Attributes:
        entry: the library function the command calls to do its work, where RUN faults are injected.
        stale: report files an earlier run left in ``--out`` that a failed run must remove.
    """

    name: str
    build: Callable[[Inputs, dict[Slot, str], Path], list[str]]
    slots: frozenset[Slot]
    entry: str
    stale: tuple[str, ...] = ()


def _pick(values: dict[Slot, str], slot: Slot, default: object) -> str:
    return str(values.get(slot, default))


def _eval(i: Inputs, v: dict[Slot, str], out: Path) -> list[str]:
    args = ["eval", "--version", f"v1={_pick(v, Slot.FEATURES, i.features)}", "--version", f"v2={i.other_features}"]
    if Slot.ADAPTER in v:
        args += ["--adapter", f"v2:v1={v[Slot.ADAPTER]}"]
    return [*args, "--out", _pick(v, Slot.OUT_DIR, out)]


def _gate(i: Inputs, v: dict[Slot, str], out: Path) -> list[str]:
    old = v.get(Slot.FEATURES) or v.get(Slot.MODEL) or i.features
    new = i.model if Slot.MODEL in v else i.other_features
    args = ["gate", "--old", str(old), "--new", str(new), "--n-resamples", "100", "--policy",
            _pick(v, Slot.POLICY, i.policy), "--out", _pick(v, Slot.OUT_DIR, out)]
    return [*args, "--dataset", "mnist-mini"] if Slot.MODEL in v else args


def _train(i: Inputs, v: dict[Slot, str], out: Path) -> list[str]:
    return ["train", _pick(v, Slot.RECIPE, i.recipe), "--out", _pick(v, Slot.OUT_DIR, out), "--device", "cpu"]


def _extract(i: Inputs, v: dict[Slot, str], out: Path) -> list[str]:
    return ["extract", "--checkpoint", _pick(v, Slot.MODEL, i.model), "--data", "mnist-mini",
            "--out", _pick(v, Slot.OUT_FILE, out / "features.npz"), "--device", "cpu"]


def _adapt(i: Inputs, v: dict[Slot, str], out: Path) -> list[str]:
    return ["adapt", "--old", _pick(v, Slot.FEATURES, i.features), "--new", str(i.other_features),
            "--out", _pick(v, Slot.OUT_FILE, out / "adapter.npz"), "--device", "cpu"]


def _plan_backfill(i: Inputs, v: dict[Slot, str], out: Path) -> list[str]:
    return ["plan-backfill", "--gallery", str(i.features), "--old", _pick(v, Slot.FEATURES, i.features),
            "--new", str(i.other_features), "--ordering", "random", "--budget", "20%", "--out",
            _pick(v, Slot.OUT_DIR, out), "--device", "cpu", "--n-resamples", "100"]


def _backfill(i: Inputs, v: dict[Slot, str], out: Path) -> list[str]:
    return ["backfill", "record", "models:/prod@champion", "--done", "10"]


def _status(i: Inputs, v: dict[Slot, str], out: Path) -> list[str]:
    return ["status", "models:/prod"]


def _demo(i: Inputs, v: dict[Slot, str], out: Path) -> list[str]:
    return ["demo", "--out", _pick(v, Slot.OUT_DIR, out), "--device", "cpu"]


COMMANDS = {c.name: c for c in (
    Command("eval", _eval, frozenset({Slot.FEATURES, Slot.ADAPTER, Slot.OUT_DIR}),
            "compat.compatibility.matrix.evaluate_chain"),
    Command("gate", _gate, frozenset({Slot.FEATURES, Slot.MODEL, Slot.POLICY, Slot.OUT_DIR}), "compat.gate.run_gate",
            stale=("gate.json", "gate.md")),
    Command("train", _train, frozenset({Slot.RECIPE, Slot.OUT_DIR}), "compat.train.train_chain"),
    Command("extract", _extract, frozenset({Slot.MODEL, Slot.OUT_FILE}), "compat.models.extract_model_file"),
    Command("adapt", _adapt, frozenset({Slot.FEATURES, Slot.OUT_FILE}), "compat.adapters.fit.fit_adapter"),
    Command("plan-backfill", _plan_backfill, frozenset({Slot.FEATURES, Slot.OUT_DIR}),
            "compat.adapters.plan_report.write_plan"),
    Command("backfill", _backfill, frozenset(), "compat.gate.ledger.record_backfill"),
    Command("status", _status, frozenset(), "compat.gate.ledger.gallery_status"),
    Command("demo", _demo, frozenset({Slot.OUT_DIR}), "compat.demo.run_demo"),
)}
