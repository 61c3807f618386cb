"""Make ``import vineyard`` work with every setuptools, quietly: the one place that handles it.

vineyard 0.24.2 (its last release; we cannot change it) runs ``import pkg_resources`` when it is
imported (v6d ``python/vineyard/deploy/utils.py`` and ``deploy/distributed.py`` @ v0.24.2) and
uses it for one thing: ``pkg_resources.resource_filename`` to find its bundled ``vineyardd`` and
``vineyardctl``. setuptools 82 removed ``pkg_resources`` (``import vineyard`` then fails with
``ModuleNotFoundError``), and setuptools 80-81 warn on every import of it.

:func:`install` (run by ``fluid_airflow/__init__.py``) adds an import hook for the top-level
``vineyard`` package only. While vineyard's ``__init__`` runs, ``pkg_resources`` is the real one,
imported with its deprecation warning silenced, or, when setuptools no longer has it, a stand-in
that provides ``resource_filename`` through :mod:`importlib.resources`. The stand-in is removed
from ``sys.modules`` as soon as vineyard is imported, so no other package mistakes it for
setuptools'. Nothing is imported until something imports vineyard.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.resources
import importlib.util
import sys
import types
import warnings
from typing import Any


def resource_filename(package: str, resource: str) -> str:
    """``pkg_resources.resource_filename`` for files inside an installed package (a path)."""
    return str(importlib.resources.files(package).joinpath(resource))


def _stand_in() -> types.ModuleType:
    module = types.ModuleType("pkg_resources", "fluid-airflow's stand-in for vineyard's import")
    module.resource_filename = resource_filename  # type: ignore[attr-defined]
    return module


class _Loader(importlib.abc.Loader):
    """Runs vineyard's own loader with a usable, silent ``pkg_resources`` in place."""

    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        stand_in = None
        with warnings.catch_warnings():
            # setuptools 80-81: "pkg_resources is deprecated as an API" on import.
            warnings.filterwarnings("ignore", message=".*pkg_resources.*", category=Warning)
            if "pkg_resources" not in sys.modules:
                try:
                    import pkg_resources  # noqa: F401
                except ImportError:
                    stand_in = sys.modules["pkg_resources"] = _stand_in()
            try:
                self.real.exec_module(module)
            finally:
                if stand_in is not None and sys.modules.get("pkg_resources") is stand_in:
                    del sys.modules["pkg_resources"]


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "vineyard":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Add the import hook once (idempotent); a no-op when vineyard is already imported."""
    if "vineyard" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
