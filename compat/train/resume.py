"""What ``--resume`` may reuse: only what the same recipe would have trained.

Every file a run reuses records the recipe it was trained under: ``recipe.yaml`` in the output
directory, the resolved recipe in each ``checkpoint.pt`` and the training settings in each
``model.pt`` (``meta.training``). Before anything is reused, the settings that decide what is
trained are compared with the recipe being run, and the first key that differs is named (exit 2):
resuming with another seed, backbone or number of epochs would otherwise reuse the old models and
report their numbers as the new recipe's.

Keys that cannot change a trained weight are left out of the comparison: ``name``, ``eval`` (the
chain is evaluated again on every run), ``adapters`` (their files record their own settings and the
model files they were trained on), ``data.root``, ``data.download`` and ``data.num_workers``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from compat.errors import CompatError

__all__ = ["IGNORED_KEYS", "check_run_dir", "check_same_training", "first_difference", "training_settings"]

IGNORED_KEYS = ("name", "eval", "adapters", "data.root", "data.download", "data.num_workers")
_ADVICE = "resume with the recipe it was trained with, or train into a new --out"


def training_settings(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe without the keys that cannot change a trained weight (:data:`IGNORED_KEYS`)."""
    out = copy.deepcopy(resolved)
    for key in IGNORED_KEYS:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def first_difference(stored: Any, current: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first key (dotted path, list items by index) whose value differs, with both values; ``None``
    when equal. A key missing on one side differs (its value there is reported as ``<absent>``)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in [*current, *(k for k in stored if k not in current)]:
            where = f"{path}.{key}" if path else str(key)
            if key not in stored or key not in current:
                return where, stored.get(key, "<absent>"), current.get(key, "<absent>")
            found = first_difference(stored[key], current[key], where)
            if found is not None:
                return found
        return None
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        for i, (a, b) in enumerate(zip(stored, current, strict=True)):
            found = first_difference(a, b, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
        return None
    comparable = _number(stored) and _number(current) or type(stored) is type(current)  # 1 == 1.0, True != 1
    return None if comparable and stored == current else (path or "(top level)", stored, current)


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def check_same_training(stored: Any, current: dict[str, Any], where: str | Path) -> None:
    """``stored`` (a resolved recipe read back from a file) trains what ``current`` trains.

    Raises:
        CompatError: ``stored`` is missing or differs; the message names the first key that differs.
    """
    if not isinstance(stored, dict):
        raise CompatError(f"{where}: records no recipe, so --resume cannot tell whether this recipe trained it; "
                          f"train into a new --out")
    found = first_difference(training_settings(stored), training_settings(current))
    if found is not None:
        key, was, now = found
        raise CompatError(f"{where}: trained with another recipe: {key} is {was!r} there and {now!r} now; {_ADVICE}")


def check_run_dir(out: Path, current: dict[str, Any]) -> None:
    """Under ``--resume``, everything already in ``out`` that the run may reuse was trained by ``current``:
    ``recipe.yaml``, every ``checkpoint.pt`` (its ``recipe``) and every ``model.pt`` (``meta.training.recipe``).

    Checked before anything is written, so a refused resume leaves ``out`` as it was.

    Raises:
        CompatError: a file was trained under another recipe (naming the file and the first key that
            differs), or records no recipe.
    """
    from compat.configfile import read_yaml_mapping
    from compat.models.io import load_checkpoint

    path = out / "recipe.yaml"
    if path.exists():
        check_same_training(read_yaml_mapping(path, "recipe"), current, path)
    for path in sorted(out.glob("v*/checkpoint.pt")):
        state = load_checkpoint(path)
        check_same_training(state.get("recipe") if isinstance(state, dict) else None, current, path)
    for path in sorted(out.glob("v*/model.pt")):
        state = load_checkpoint(path)
        meta = state.get("meta") if isinstance(state, dict) else None
        training = meta.get("training") if isinstance(meta, dict) else None
        check_same_training(training.get("recipe") if isinstance(training, dict) else None, current, path)
