"""What ``dir(fastbn)`` shows a user: the public API and nothing that fastbn imported for its own use."""

from __future__ import annotations

import types

import fastbn


def own_submodules(package: types.ModuleType) -> set[str]:
    """Public names bound to the package's own submodules. Python's import system binds every imported submodule
    as an attribute of its package (``import fastbn.bench`` anywhere adds ``fastbn.bench``), so ``functional``,
    ``batchnorm`` and ``cuda`` are there after ``import fastbn``, and ``bench``, ``demo`` once something imports
    them. A module imported for internal use (``warnings``, ``numpy``) is not one: its name is not fastbn.X."""
    return {
        name
        for name in dir(package)
        if not name.startswith("_")
        and isinstance(getattr(package, name), types.ModuleType)
        and getattr(package, name).__name__ == f"{package.__name__}.{name}"
    }


def test_public_namespace_is_all_plus_own_submodules():
    public = {name for name in dir(fastbn) if not name.startswith("_")}  # _core, __version__, ...: private or dunder
    submodules = own_submodules(fastbn)
    exported = {name for name in fastbn.__all__ if not name.startswith("_")}
    assert {"batchnorm", "cuda", "functional"} <= submodules
    assert public - submodules - exported == set(), "stray names in dir(fastbn)"


def test_every_name_in_all_exists():
    assert [name for name in fastbn.__all__ if not hasattr(fastbn, name)] == []
    assert len(set(fastbn.__all__)) == len(fastbn.__all__)
