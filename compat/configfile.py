"""YAML files validated into frozen pydantic models: recipes, gate policies, dataset tables.

One reader, one error format: ``FILE: KEY: what was expected``. YAML is read with ``safe_load``
(no tags that build objects), unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from compat._files import input_file
from compat.errors import CompatError

__all__ = ["read_yaml_mapping", "validate_model"]

M = TypeVar("M", bound=BaseModel)


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping at the top of a YAML file.

    Raises:
        CompatError: missing, not a regular file, unreadable, not UTF-8, not YAML, or not a mapping
            (``what`` names the file's role).
    """
    p = input_file(path, what)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CompatError(f"{p}: cannot read the {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise CompatError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason}); a {what} is a UTF-8 YAML file") from None
    except yaml.YAMLError as exc:
        raise CompatError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise CompatError(f"{p}: a {what} must be a mapping of keys to values")
    return raw


def validate_model(model: type[M], raw: dict[str, Any], where: str | Path) -> M:
    """``model.model_validate(raw)``, its first error as ``WHERE: KEY: message``.

    Raises:
        CompatError: an unknown key or a wrong value.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "(top level)"
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise CompatError(f"{where}: {key}: {' '.join(str(what).split())}") from None
