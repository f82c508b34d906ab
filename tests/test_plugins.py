"""The plugin layout: everything family-specific lives in glmha.archs, the registry matches attention classes
exactly, and reading a model never loads the converter."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import glmha
from glmha.archs import ADAPTERS, FAMILY_CLASSES, adapter_for
from glmha.archs.mdta import RestormerAttention
from glmha.errors import GlmhaError
from glmha.layers import CSALayer

PACKAGE = Path(glmha.__file__).parent
OUTSIDE_ARCHS = sorted(p for p in PACKAGE.rglob("*.py") if "archs" not in p.relative_to(PACKAGE).parts)


def _family_words() -> re.Pattern[str]:
    words = {w.lower() for cls in FAMILY_CLASSES for w in (cls.family, cls.title)}
    words |= {"mst-l", "mst_l", "mst++"}
    alternatives = "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))
    return re.compile(rf"(?<![a-z0-9_])({alternatives})(?![a-z0-9_])", re.IGNORECASE)


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _family_names() -> set[str]:
    """Class names a module outside glmha.archs must not use: the families and the layer kinds they bring."""
    names = {cls.__name__ for cls in FAMILY_CLASSES}
    names |= {c.__name__ for adapter in ADAPTERS.values() for c in (adapter.csa_class, adapter.glmha_class)}
    return names


@pytest.mark.parametrize("path", OUTSIDE_ARCHS, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_family_is_named_outside_archs(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    pattern = _family_words()
    family_modules = {cls.__module__ for cls in FAMILY_CLASSES} | {
        c.__module__ for adapter in ADAPTERS.values() for c in (adapter.csa_class, adapter.glmha_class)}
    class_names = _family_names()
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if match := pattern.search(node.value):
                problems.append(f"line {node.lineno}: string names {match.group(0)!r}")
        elif isinstance(node, ast.ImportFrom) and node.module in family_modules:
            problems.append(f"line {node.lineno}: imports {node.module}")
        elif isinstance(node, ast.Import) and any(alias.name in family_modules for alias in node.names):
            problems.append(f"line {node.lineno}: imports a family module")
        elif isinstance(node, ast.Name) and node.id in class_names:
            problems.append(f"line {node.lineno}: uses {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in class_names:
            problems.append(f"line {node.lineno}: uses .{node.attr}")
    assert not problems, problems


def test_the_checker_sees_family_names() -> None:
    """The scan above is only as good as its pattern: it must catch the spellings code would use."""
    pattern = _family_words()
    for text in ("restormer", "MST++ teacher", "mst_plus_plus", "a DRSformer model", "MST-L", "retinexformer"):
        assert pattern.search(text), text
    for text in ("mst_inputs", "amster", "restormers_like", "transformer"):
        assert not pattern.search(text), text


class _SubclassedMDTA(RestormerAttention):
    """A kind that subclasses MDTA and could compute something else (as DRSformer's TKSA would)."""


def test_adapters_match_the_exact_class_only() -> None:
    layer = _SubclassedMDTA(8, 2, False)
    with pytest.raises(GlmhaError, match=r"^no GLMHA conversion is registered for .*_SubclassedMDTA$"):
        adapter_for(layer)
    assert adapter_for(RestormerAttention(8, 2, False)).csa_class is RestormerAttention


@pytest.mark.parametrize("cls", FAMILY_CLASSES, ids=lambda c: c.family)
def test_every_attention_of_every_family_has_its_adapter(cls) -> None:
    with torch.device("meta"):
        model = cls()  # the published default configuration
    kinds = {type(layer) for _, layer in model.csa_layers()}
    assert kinds, cls.family
    declared = {adapter.csa_class for adapter in cls.attention_adapters}
    assert kinds <= declared, (cls.family, kinds - declared)
    for kind in kinds:
        assert ADAPTERS[kind].csa_class is kind
        assert issubclass(ADAPTERS[kind].glmha_class, CSALayer)


def test_reading_and_exporting_never_import_the_converter(tmp_path) -> None:
    """glmha.load, running a model and glmha.export stay independent of glmha.convert."""
    from glmha.archs import Restormer

    model = Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
    torch.save({"params": model.state_dict()}, tmp_path / "teacher.pth")
    script = ("import sys, torch, glmha\n"
              f"m = glmha.load({str(tmp_path / 'teacher.pth')!r})\n"
              "m(torch.zeros(1, 3, 8, 8))\n"
              "print(sorted(k for k in sys.modules if k.startswith('glmha.convert')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
