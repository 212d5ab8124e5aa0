"""The type stub of the compiled module covers everything it exports, and the public API is annotated."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import fastbn


def stub_names() -> set[str]:
    tree = ast.parse((Path(fastbn.__file__).parent / "_core.pyi").read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def test_stub_covers_the_compiled_module():
    exported = {n for n in dir(fastbn._core) if not n.startswith("_")}
    missing = exported - stub_names()
    assert not missing, f"_core.pyi lacks {sorted(missing)}"
    assert (Path(fastbn.__file__).parent / "py.typed").exists()


def test_public_functions_have_return_annotations():
    for name in fastbn.__all__:
        obj = getattr(fastbn, name)
        if inspect.isfunction(obj):
            assert inspect.signature(obj).return_annotation is not inspect.Signature.empty, name
