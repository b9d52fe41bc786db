"""Every fault of the table against every command that takes its input: the exit code, one line naming the
input, no partial output, no earlier verdict left behind (docs/reliability.md)."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from compat.cli import cli
from tests.cli import test_eval as eval_cases
from tests.faults.commands import COMMANDS, Inputs, Slot
from tests.faults.table import RECIPE, Fault, cases, count_table
from tests.paths import REPO

data = eval_cases.data  # the evaluator tests' feature files: their bad-file builders need them

STALE = '{"passed": true}\n'  # an earlier run's verdict


@pytest.fixture(scope="module")
def inputs(data, tmp_path_factory) -> Inputs:
    from compat.adapters import AdapterConfig, fit_adapter, save_adapter
    from compat.features import load_features
    from compat.models import build_model, save_model

    root = tmp_path_factory.mktemp("fault-inputs")
    spec = {"backbone": "smallcnn", "feature_dim": 16, "head": "linear", "num_classes": 10}
    torch.manual_seed(0)
    model = save_model(root / "model.pt", build_model(**spec), spec)
    adapter = fit_adapter(load_features(data["v2"]), load_features(data["v1"]),
                          AdapterConfig(kind="lambda", forward="mlp", hidden=8, epochs=1), device="cpu", progress=False)
    (root / "recipe.yaml").write_text(RECIPE, encoding="utf-8")
    (root / "policy.yaml").write_text("checks: [{kind: compatibility, threshold: 0}]\n", encoding="utf-8")
    return Inputs(data["v1"], data["v2"], model, save_adapter(adapter, root / "adapter.npz"), root / "recipe.yaml",
                  root / "policy.yaml")


def _invoke(args: list[str], timeout: float = 120) -> Result:
    """Run the command; a reader blocked on a FIFO would never return, so it is given a time limit."""
    done: list[Result] = []
    worker = threading.Thread(target=lambda: done.append(CliRunner().invoke(cli, args)), daemon=True)
    worker.start()
    worker.join(timeout)
    assert done, f"compat {' '.join(args)} did not finish within {timeout} s"
    return done[0]


def _inject(monkeypatch: pytest.MonkeyPatch, entry: str, raises: BaseException) -> None:
    def run(*args, **kwargs):
        raise raises

    monkeypatch.setattr(entry, run)


@pytest.mark.parametrize(("fault", "command"), cases(), ids=[f"{c}-{f.id}" for f, c in cases()])
def test_a_fault_exits_with_its_code_and_one_line(fault: Fault, command: str, inputs: Inputs, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = COMMANDS[command]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # a bug's log, for a command without --out
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    values: dict[Slot, str] = {}
    extra: list[str] = []
    value = ""
    if fault.slot is Slot.RUN:
        _inject(monkeypatch, cmd.entry, fault.raises)
    elif fault.slot is Slot.OPTION:
        extra = json.loads(fault.make(work, inputs))
    else:
        value = values[fault.slot] = fault.make(work, inputs)
    if fault.patch is not None:
        fault.patch(monkeypatch, value)
    stale = [out / name for name in cmd.stale] if fault.slot is not Slot.OUT_DIR else []
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_text(STALE, encoding="utf-8")

    result = _invoke([*cmd.build(inputs, values, out), *extra])

    assert result.exit_code == fault.exit, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines, result.output
    for fragment in fault.fragments:
        assert fragment.format(value=value) in lines[-1], (fragment, lines[-1])
    if lines[-1].startswith("compat:"):
        assert len(lines) == 1, result.stderr
    for path in stale:
        assert not path.exists(), f"{path.name} of an earlier run survived a failed run"
    if fault.slot not in (Slot.OUT_DIR, Slot.OUT_FILE) and out.exists():  # no partial output, only a bug's log
        assert {p.name for p in out.iterdir()} <= {"compat-error.log"}, sorted(out.iterdir())


def test_every_command_is_in_the_fault_table() -> None:
    """A new command must say which inputs it takes (tests/faults/commands.py): it then inherits their faults."""
    assert set(cli.commands) == set(COMMANDS)


def test_every_input_kind_has_faults_and_every_command_is_run_against_them() -> None:
    ran = {(f.slot, c) for f, c in cases()}
    for name, command in COMMANDS.items():
        for slot in (*command.slots, Slot.RUN):
            assert (slot, name) in ran, (slot, name)


def test_docs_give_the_count_of_fault_cases_per_command() -> None:
    """docs/reliability.md holds the table that ``python -m tests.faults.table`` prints."""
    doc = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert count_table() in doc

