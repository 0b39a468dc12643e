"""Imports flow one way: training, eval and service use model; eval may read data through
training; service uses model alone; model imports none of them."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

STAGES = ("model", "training", "eval", "service")
ALLOWED = {
    "model": {"model"},
    "training": {"model", "training"},
    "eval": {"model", "eval", "training"},
    "service": {"model", "service"},
}


def imported_stages(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names} & set(STAGES)
    return found


@pytest.mark.parametrize("package", STAGES)
def test_package_imports_only_the_stages_below_it(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = {
        str(f.relative_to(ROOT)): sorted(imported_stages(f) - ALLOWED[package])
        for f in files
        if imported_stages(f) - ALLOWED[package]
    }
    assert wrong == {}
