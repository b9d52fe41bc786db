"""The fault table: (input, command, expected exit code, expected message fragment), one row each.

Each :class:`Fault` is a bad value for one slot (:class:`tests.faults.commands.Slot`); :func:`cases`
runs it against every command that has the slot, so a new command inherits every fault of the inputs
it takes. ``python -m tests.faults.table`` prints the count of cases per command, the table that
``docs/reliability.md`` holds (a test keeps the two equal).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.cli import test_eval as eval_cases
from tests.faults.commands import COMMANDS, Inputs, Slot


@dataclass(frozen=True)
class Fault:
    """A bad value for ``slot``: ``make(tmp, inputs)`` writes it and returns it (a path or option text).

    ``fragments`` must appear in the last line on stderr (``{value}`` stands for the value made).
    ``command`` limits an OPTION fault to one command; ``raises`` is what a RUN fault injects.
    """

    id: str
    slot: Slot
    make: Callable[[Path, Inputs], str] | None
    fragments: tuple[str, ...]
    exit: int = 2
    command: str | None = None
    raises: BaseException | None = None
    patch: Callable[[object, str], None] | None = None  # (monkeypatch, value): set up what make cannot


def _write(name: str, data: bytes | str) -> Callable[[Path, Inputs], str]:
    def make(tmp: Path, inputs: Inputs) -> str:
        p = tmp / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return str(p)

    return make


def _fifo(name: str) -> Callable[[Path, Inputs], str]:
    def make(tmp: Path, inputs: Inputs) -> str:
        os.mkfifo(tmp / name)  # a reader that opened it would wait for a writer forever
        return str(tmp / name)

    return make


def _missing(name: str) -> Callable[[Path, Inputs], str]:
    return lambda tmp, inputs: str(tmp / name)


def _under_a_file(name: str) -> Callable[[Path, Inputs], str]:
    def make(tmp: Path, inputs: Inputs) -> str:
        (tmp / "a-file").write_text("not a directory", encoding="utf-8")
        return str(tmp / "a-file" / name)

    return make


def _unreadable(tmp: Path, inputs: Inputs) -> str:
    """A path inside a directory that cannot be searched."""
    locked = tmp / "locked"
    locked.mkdir()
    (locked / "v1.npz").write_bytes(Path(inputs.features).read_bytes())
    locked.chmod(0)
    return str(locked / "v1.npz")


def _as_unprivileged(monkeypatch, value: str) -> None:
    """root searches any directory: make stat() answer what it answers an ordinary user."""
    if os.geteuid() != 0:
        return
    locked, real = str(Path(value).parent), os.stat

    def stat(path, *args, **kwargs):
        if str(path).startswith(locked + os.sep):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)


# ---------------------------------------------------------------- feature sets

_EVAL_FILE_CASES = ("missing-file", "random-bytes", "truncated-zip", "single-npy-array", "missing-array", "features-1d",
                    "labels-wrong-length", "ids-wrong-length", "nan-features", "inf-features", "duplicate-ids",
                    "empty-set", "pickle-in-meta", "pickle-in-labels", "meta-not-json", "dir-missing-array",
                    "dir-pickle-in-labels", "dir-inf-features")


def _from_eval(build) -> Callable[[Path, Inputs], str]:
    """A bad feature file of the evaluator's own tests (tests/cli/test_eval.py), for any command."""

    def make(tmp: Path, inputs: Inputs) -> str:
        args, _ = build(tmp, _eval_data(inputs))
        return args[args.index("--version", 2) + 1].partition("=")[2]

    return make


def _eval_data(inputs: Inputs) -> dict[str, Path]:
    return {"v1": inputs.features, "v2": inputs.other_features}


def _header_bomb(tmp: Path, inputs: Inputs) -> str:
    """An .npz of 1 KB whose features header claims 256 GiB: numpy would allocate that before reading."""
    header = io.BytesIO()
    from numpy.lib import format as npy_format

    npy_format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**36, 1)})
    p = tmp / "bomb.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("features.npy", header.getvalue() + b"\0" * 16)  # the header holds the magic
        for key in ("labels", "ids"):
            member = io.BytesIO()
            np.save(member, np.zeros(4, np.int64))
            z.writestr(f"{key}.npy", member.getvalue())
    return str(p)


_FEATURE_EXPECT = {"missing-file": ("no such feature file",), "random-bytes": ("not a .npz archive",),
                   "single-npy-array": ("single array",), "missing-array": ("missing array 'ids'",),
                   "features-1d": ("features", "2-D"), "labels-wrong-length": ("labels", "shape"),
                   "ids-wrong-length": ("ids", "shape"), "nan-features": ("NaN",), "inf-features": ("infinite",),
                   "duplicate-ids": ("ids", "unique"), "empty-set": ("empty",), "pickle-in-meta": ("pickle",),
                   "pickle-in-labels": ("pickle",), "meta-not-json": ("meta", "JSON"),
                   "dir-missing-array": ("features.npy", "missing"), "dir-pickle-in-labels": ("pickle",),
                   "dir-inf-features": ("infinite",), "truncated-zip": ()}

FEATURE_FAULTS = [
    *(Fault(f"features:{p.id}", Slot.FEATURES, _from_eval(p.values[0]), ("{value}", *_FEATURE_EXPECT[p.id]))
      for p in eval_cases.BAD_INPUTS if p.id in _EVAL_FILE_CASES),
    Fault("features:fifo", Slot.FEATURES, _fifo("pipe.npz"), ("{value}", "a FIFO")),
    Fault("features:unreadable-directory", Slot.FEATURES, _unreadable, ("{value}", "permission denied"),
          patch=_as_unprivileged),
    Fault("features:header-claims-256GiB", Slot.FEATURES, _header_bomb, ("{value}", "header claims", "(68719476736, 1)")),
    Fault("features:a-directory-without-arrays", Slot.FEATURES, lambda tmp, i: str(tmp), ("features.npy", "missing")),
]


# ---------------------------------------------------------------- model files


def _model(name: str, change: Callable[[dict], object]) -> Callable[[Path, Inputs], str]:
    """The valid model file with ``change`` applied to its loaded contents, saved as ``name``."""

    def make(tmp: Path, inputs: Inputs) -> str:
        import torch

        state = torch.load(inputs.model, weights_only=True)
        p = tmp / name
        torch.save(change(state), p)
        return str(p)

    return make


class _Calls:
    """Unpickling this would run ``os.system``: a weights-only load must refuse it, saying so."""

    def __reduce__(self):
        return (os.system, ("touch compat-trap-fired",))


def _spec(**change) -> Callable[[dict], dict]:
    return lambda state: {**state, "spec": {**state["spec"], **change}}


MODEL_FAULTS = [
    Fault("model:missing", Slot.MODEL, _missing("nope.pt"), ("{value}", "no such checkpoint")),
    Fault("model:fifo", Slot.MODEL, _fifo("pipe.pt"), ("{value}", "a FIFO")),
    Fault("model:random-bytes", Slot.MODEL, _write("random.pt", np.random.default_rng(0).bytes(2048)),
          ("{value}", "not a loadable checkpoint")),
    Fault("model:calls-code", Slot.MODEL, _model("calls.pt", lambda s: {**s, "spec": _Calls()}),
          ("{value}", "refused: the file calls posix.system")),
    Fault("model:plain-pickle", Slot.MODEL, _write("plain.pt", pickle.dumps({"model": {}, "spec": {}})),
          ("{value}", "not a loadable checkpoint")),
    Fault("model:no-spec", Slot.MODEL, _model("nospec.pt", lambda s: {"model": s["model"]}),
          ("{value}", "not a compat model file")),
    Fault("model:unknown-spec-key", Slot.MODEL, _model("wings.pt", _spec(wings=2)), ("{value}", "field 'spec'")),
    Fault("model:unknown-backbone", Slot.MODEL, _model("bb.pt", _spec(backbone="nope")), ("{value}", "backbone")),
    Fault("model:weights-do-not-fit", Slot.MODEL, _model("fit.pt", _spec(feature_dim=8)), ("{value}", "do not fit")),
    Fault("model:huge-feature-dim", Slot.MODEL, _model("huge.pt", _spec(feature_dim=10**9)),
          ("{value}", "spec.feature_dim", "larger than any dimension")),
    Fault("model:negative-feature-dim", Slot.MODEL, _model("neg.pt", _spec(feature_dim=-5)),
          ("{value}", "field 'spec'", "-5")),
    Fault("model:negative-backbone-size", Slot.MODEL, _model("negkw.pt", _spec(backbone_kwargs={"in_channels": -1})),
          ("{value}", "field 'spec'")),
    Fault("model:huge-backbone-size", Slot.MODEL, _model("hugekw.pt", _spec(backbone_kwargs={"in_channels": 10**7})),
          ("{value}", "spec.backbone_kwargs.in_channels")),
    Fault("model:weights-not-tensors", Slot.MODEL, _model("strs.pt", lambda s: {**s, "model": {"w": "x"}}),
          ("{value}", "field 'model'")),
    Fault("model:meta-not-a-mapping", Slot.MODEL, _model("meta.pt", lambda s: {**s, "meta": [1]}),
          ("{value}", "field 'meta'")),
]


# ---------------------------------------------------------------- adapter files


def _adapter(name: str, **meta_change) -> Callable[[Path, Inputs], str]:
    """The valid adapter file with its JSON meta changed (``None`` removes a key)."""

    def make(tmp: Path, inputs: Inputs) -> str:
        with np.load(inputs.adapter, allow_pickle=False) as z:
            arrays = dict(z)
        meta = json.loads(str(arrays["meta"]))
        meta.update(meta_change)
        arrays["meta"] = np.array(json.dumps({k: v for k, v in meta.items() if v is not None}))
        p = tmp / name
        np.savez(p, **arrays)
        return str(p)

    return make


ADAPTER_FAULTS = [
    Fault("adapter:missing", Slot.ADAPTER, _missing("nope.npz"), ("{value}", "no such adapter file")),
    Fault("adapter:fifo", Slot.ADAPTER, _fifo("pipe.npz"), ("{value}", "a FIFO")),
    Fault("adapter:random-bytes", Slot.ADAPTER, _write("random.npz", np.random.default_rng(1).bytes(4096)),
          ("{value}", "not an adapter file")),
    Fault("adapter:a-torch-checkpoint", Slot.ADAPTER, lambda tmp, i: str(i.model), ("{value}", "adapter")),
    Fault("adapter:alpha-is-text", Slot.ADAPTER, _adapter("alpha.npz", alpha="x"), ("{value}", "'alpha'")),
    Fault("adapter:hidden-is-text", Slot.ADAPTER, _adapter("hidden.npz", hidden="x"), ("{value}", "'hidden'")),
    Fault("adapter:dims-are-booleans", Slot.ADAPTER, _adapter("bool.npz", new_dim=True), ("{value}", "new_dim")),
    Fault("adapter:training-is-a-list", Slot.ADAPTER, _adapter("training.npz", training=[1]), ("{value}", "training")),
    Fault("adapter:huge-old-dim", Slot.ADAPTER, _adapter("huge.npz", old_dim=10**9, forward="affine"),
          ("{value}", "forward arrays")),
    Fault("adapter:huge-hidden", Slot.ADAPTER, _adapter("hugeh.npz", hidden=10**9, forward="mlp"),
          ("{value}", "'forward.0.weight' must have shape (1000000000, 16)")),
    Fault("adapter:unknown-meta-key", Slot.ADAPTER, _adapter("key.npz", colour="red"), ("{value}", "unknown key")),
    Fault("adapter:other-format", Slot.ADAPTER, _adapter("fmt.npz", format="other"), ("{value}", "format")),
]


# ---------------------------------------------------------------- recipes and policies

RECIPE = "data: {dataset: mnist-mini, fractions: [0.02, 0.04]}\ntrain: {epochs: 1, batch_size: 32}\n"


def _recipe(name: str, text: str) -> Callable[[Path, Inputs], str]:
    return _write(name, text)


RECIPE_FAULTS = [
    Fault("recipe:missing", Slot.RECIPE, _missing("nope.yaml"), ("{value}", "no such recipe")),
    Fault("recipe:fifo", Slot.RECIPE, _fifo("pipe.yaml"), ("{value}", "a FIFO")),
    Fault("recipe:not-utf-8", Slot.RECIPE, _write("latin1.yaml", "name: caf\xe9\n".encode("latin-1")),
          ("{value}", "not UTF-8")),
    Fault("recipe:not-yaml", Slot.RECIPE, _recipe("bad.yaml", "data: {dataset: [\n"), ("{value}", "not valid YAML")),
    Fault("recipe:not-a-mapping", Slot.RECIPE, _recipe("list.yaml", "- 1\n"), ("{value}", "mapping")),
    Fault("recipe:unknown-key", Slot.RECIPE, _recipe("key.yaml", RECIPE + "trian: {}\n"), ("trian", "unknown key")),
    Fault("recipe:epochs-is-text", Slot.RECIPE, _recipe("e.yaml", RECIPE.replace("epochs: 1", "epochs: '3'")),
          ("train.epochs", "valid integer")),
    Fault("recipe:epochs-is-a-float", Slot.RECIPE, _recipe("f.yaml", RECIPE.replace("epochs: 1", "epochs: 2.0")),
          ("train.epochs", "valid integer")),
    Fault("recipe:seed-is-a-boolean", Slot.RECIPE, _recipe("s.yaml", RECIPE + "seed: true\n"), ("seed", "integer")),
    Fault("recipe:negative-seed", Slot.RECIPE, _recipe("n.yaml", RECIPE + "seed: -1\n"), ("seed", "greater than")),
    Fault("recipe:eval-batch-size-0", Slot.RECIPE,
          _recipe("b.yaml", RECIPE.replace("batch_size: 32}", "batch_size: 32, eval_batch_size: 0}")),
          ("train.eval_batch_size",)),
    Fault("recipe:negative-num-workers", Slot.RECIPE,
          _recipe("w.yaml", RECIPE.replace("fractions: [0.02, 0.04]", "fractions: [0.02, 0.04], num_workers: -1")),
          ("data.num_workers",)),
    Fault("recipe:zero-learning-rate", Slot.RECIPE, _recipe("lr.yaml", RECIPE.replace("epochs: 1", "epochs: 1, lr: 0")),
          ("train.lr",)),
    Fault("recipe:unknown-method-option", Slot.RECIPE,
          _recipe("m.yaml", RECIPE + "method: {name: bct, options: {wings: 2}}\n"), ("wings",)),
    Fault("recipe:init-checkpoint-missing", Slot.RECIPE,
          _recipe("i.yaml", RECIPE + "versions: [{}, {init_checkpoint: /nonexistent/w.pt}]\n"),
          ("versions.1.init_checkpoint", "/nonexistent/w.pt", "no such checkpoint")),
    Fault("recipe:more-versions-than-planned", Slot.RECIPE, _recipe("v.yaml", RECIPE + "versions: [{}, {}, {}]\n"),
          ("versions", "3 entries")),
    Fault("recipe:adapter-pair-unknown", Slot.RECIPE, _recipe("a.yaml", RECIPE + "adapters: {pairs: ['v9:v0']}\n"),
          ("adapters.pairs", "v9:v0")),
]

_CHECK = "checks: [{kind: compatibility, threshold: 0}]\n"

POLICY_FAULTS = [
    Fault("policy:missing", Slot.POLICY, _missing("nope.yaml"), ("{value}", "no such gate policy")),
    Fault("policy:fifo", Slot.POLICY, _fifo("pipe.yaml"), ("{value}", "a FIFO")),
    Fault("policy:not-yaml", Slot.POLICY, _write("bad.yaml", "checks: [\n"), ("{value}", "not valid YAML")),
    Fault("policy:unknown-key", Slot.POLICY, _write("key.yaml", _CHECK + "colour: red\n"), ("colour", "unknown key")),
    Fault("policy:no-checks", Slot.POLICY, _write("none.yaml", "checks: []\n"), ("checks",)),
    Fault("policy:no-required-check", Slot.POLICY,
          _write("opt.yaml", "checks: [{kind: compatibility, threshold: 0, required: false}]\n"),
          ("at least one check must be required",)),
    Fault("policy:threshold-is-text", Slot.POLICY, _write("t.yaml", "checks: [{kind: compatibility, threshold: '0.1'}]\n"),
          ("threshold", "valid number")),
    Fault("policy:required-is-text", Slot.POLICY,
          _write("r.yaml", "checks: [{kind: compatibility, threshold: 0, required: 'yes'}]\n"), ("required",)),
    Fault("policy:unknown-kind", Slot.POLICY, _write("k.yaml", "checks: [{kind: speed, threshold: 0}]\n"), ("kind",)),
    Fault("policy:pairs-metric", Slot.POLICY, _write("m.yaml", "checks: [{kind: compatibility, metric: acc, threshold: 0}]\n"),
          ("metric", "pair-verification")),
    Fault("policy:confidence-1", Slot.POLICY, _write("c.yaml", "confidence: 1.0\n" + _CHECK), ("confidence",)),
    Fault("policy:infinite-threshold", Slot.POLICY, _write("i.yaml", "checks: [{kind: compatibility, threshold: .inf}]\n"),
          ("threshold", "finite")),
]


# ---------------------------------------------------------------- outputs


def _directory_named(name: str) -> Callable[[Path, Inputs], str]:
    def make(tmp: Path, inputs: Inputs) -> str:
        (tmp / name).mkdir()
        return str(tmp / name)

    return make


OUT_FAULTS = [
    Fault("out:an-existing-file", Slot.OUT_DIR, _write("a-file", "not a directory"), ("{value}", "is a file")),
    Fault("out:under-a-file", Slot.OUT_DIR, _under_a_file("reports"), ("{value}", "a-file is a file")),
    Fault("out-file:under-a-file", Slot.OUT_FILE, _under_a_file("out.npz"), ("{value}", "a-file is a file")),
    Fault("out-file:an-existing-directory", Slot.OUT_FILE, _directory_named("out.npz"), ("{value}", "is a directory")),
]


# ---------------------------------------------------------------- options and runs


def _option(command: str, name: str, args: list[str], fragments: tuple[str, ...]) -> Fault:
    return Fault(f"option:{name}", Slot.OPTION, lambda tmp, inputs: json.dumps(args), fragments, command=command)


OPTION_FAULTS = [
    _option("gate", "n-resamples-below-the-minimum", ["--n-resamples", "10"], ("n_resamples", "at least 100")),
    _option("gate", "negative-seed", ["--seed", "-1"], ("--seed",)),
    _option("gate", "promote-a-name-with-a-slash", ["--promote", "team/prod"], ("registered model name",)),
    _option("eval", "more-folds-than-pairs", ["--protocol", "pairs", "--pairs", "1", "--folds", "10"],
            ("10 folds need at least 10 pairs",)),
    _option("eval", "negative-seed", ["--seed", "-1"], ("--seed",)),
    _option("eval", "memory-budget-not-a-size", ["--memory-budget", "lots"], ("memory_budget",)),
    _option("adapt", "out-not-npz", ["--out", "adapter.bin"], ("must end in .npz",)),
    _option("adapt", "negative-seed", ["--seed", "-1"], ("--seed",)),
    _option("extract", "unknown-dataset", ["--data", "nope"], ("dataset", "nope")),
    _option("demo", "negative-seed", ["--seed", "-1"], ("--seed",)),
    _option("plan-backfill", "negative-seed", ["--seed", "-1"], ("--seed",)),
    _option("plan-backfill", "both-budget-and-target", ["--target", "cmc@1>=0.9"], ("--budget / --target",)),
    _option("backfill", "done-not-a-count-or-file", ["--done", "/nonexistent/ids.txt"],
            ("--done", "expected a number of items or a file of ids")),
    _option("train", "set-not-key-value", ["--set", "train.epochs"], ("--set", "key=value")),
    _option("train", "set-eval-batch-size-0", ["--set", "train.eval_batch_size=0"], ("train.eval_batch_size",)),
    _option("train", "set-num-workers-negative", ["--set", "data.num_workers=-1"], ("data.num_workers",)),
]

RUN_FAULTS = [
    Fault("run:a-bug", Slot.RUN, None, ("compat: internal error: RuntimeError: injected", "compat-error"),
          exit=3, raises=RuntimeError("injected")),
    Fault("run:ctrl-c", Slot.RUN, None, ("compat: interrupted",), exit=130, raises=KeyboardInterrupt()),
    Fault("run:disk-full", Slot.RUN, None, ("No space left on device",),
          raises=OSError(28, "No space left on device", "report.png")),
]

FAULTS = [*FEATURE_FAULTS, *MODEL_FAULTS, *ADAPTER_FAULTS, *RECIPE_FAULTS, *POLICY_FAULTS, *OUT_FAULTS, *OPTION_FAULTS,
          *RUN_FAULTS]


def cases() -> list[tuple[Fault, str]]:
    """Every (fault, command) pair: a fault runs against each command that has its slot."""
    out = []
    for fault in FAULTS:
        for name, command in COMMANDS.items():
            if fault.command == name or (fault.command is None and (fault.slot in command.slots
                                                                    or fault.slot is Slot.RUN)):
                out.append((fault, name))
    return out


def count_table() -> str:
    """The Markdown table of fault cases per command and input kind (docs/reliability.md holds it)."""
    counts = Counter((fault.slot, name) for fault, name in cases())
    slots = [s for s in Slot if any(k[0] is s for k in counts)]
    lines = ["| command | " + " | ".join(s.value for s in slots) + " | all |",
             "|---|" + "---:|" * (len(slots) + 1)]
    for name in COMMANDS:
        row = [counts.get((s, name), 0) for s in slots]
        lines.append(f"| `compat {name}` | " + " | ".join(str(n) if n else "–" for n in row) + f" | {sum(row)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(count_table(), end="")
