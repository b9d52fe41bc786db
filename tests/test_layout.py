"""The package's shape: layers import downwards only, functions and modules stay readable, the code
cites only what the repository holds, and the command line starts without torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

PACKAGE = REPO / "compat"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450


def _imported(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["gate", "adapters", "retrieval", "compatibility", "models", "methods", "data"])
def test_inference_and_library_layers_import_nothing_from_training(package: str) -> None:
    offenders = {str(p.relative_to(REPO)): sorted(n for n in _imported(p) if n.startswith(("compat.train", "compat.cli")))
                 for p in (PACKAGE / package).rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_functions_and_modules_stay_readable() -> None:
    long_modules, long_functions = [], []
    for path in MODULES:
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} lines")
    assert long_modules == [] and long_functions == []


def test_code_cites_only_files_in_the_repository() -> None:
    outside = re.compile(r"\.\./shared|(?<![/\w])(DESIGN|METHODS|STYLE)\.md")
    cited = [f"{p.relative_to(REPO)}:{i}" for p in MODULES
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if outside.search(line)]
    assert cited == []
    for doc in re.findall(r"docs/[\w.-]+\.md", "".join(p.read_text(encoding="utf-8") for p in MODULES)):
        assert (REPO / doc).is_file(), doc


def test_the_command_line_starts_without_torch_or_mlflow() -> None:
    code = "import sys, compat.cli; print(sorted(m for m in ('torch', 'mlflow', 'faiss') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
