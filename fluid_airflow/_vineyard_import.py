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

Two things vineyard's import does that no XCom needs are deferred to first use (measured: 0.7 s
of the 1.3 s a task process spends importing vineyard):

- ``vineyard.deploy.utils``, ``.etcd`` and ``.kubernetes`` import the ``kubernetes`` client (0.45 s)
  for vineyard's Kubernetes deploy helpers. While vineyard's ``__init__`` runs, ``import
  kubernetes`` fails (``sys.modules`` entry ``None``), so those modules set their ``kubernetes`` to
  ``None``; afterwards each gets a stand-in that imports the real client on first attribute access.
  (``importlib.util.LazyLoader`` cannot do this: the ``import`` statement itself reads the lazy
  module's ``__spec__``, which loads it.)
- ``vineyard.deploy.ctl._register`` builds its ``vineyardctl`` command by running the bundled
  ``vineyardctl`` binary (0.2 s, a subprocess); a stand-in runs that registration on first call.
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
            deferred = "kubernetes" not in sys.modules and importlib.util.find_spec("kubernetes") is not None
            if deferred:
                sys.modules["kubernetes"] = None  # type: ignore[assignment]  # `import kubernetes` fails
            try:
                self.real.exec_module(module)
            finally:
                if deferred:
                    _defer_kubernetes()
                if stand_in is not None and sys.modules.get("pkg_resources") is stand_in:
                    del sys.modules["pkg_resources"]


class _CommandOnFirstUse:
    """Stands for vineyard's ``vineyardctl`` command object until it is first used (called, or a
    subcommand read): then vineyard's own ``_register`` builds it, and it replaces this stand-in."""

    def __init__(self, ctl: types.ModuleType) -> None:
        self._ctl = ctl

    def _command(self) -> Any:
        ctl = self._ctl
        if getattr(ctl, "vineyardctl", None) is self:
            del ctl.vineyardctl
            ctl._register()
            deploy = sys.modules.get("vineyard.deploy")
            if deploy is not None and getattr(deploy, "vineyardctl", None) is self:
                deploy.vineyardctl = ctl.vineyardctl  # type: ignore[attr-defined]
        return ctl.vineyardctl

    def __getattr__(self, name: str) -> Any:
        return getattr(self._command(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._command()(*args, **kwargs)


class _CtlLoader(importlib.abc.Loader):
    """Runs ``vineyard.deploy.ctl`` and gives it a :class:`_CommandOnFirstUse`, so its
    ``_register`` (called by ``vineyard.deploy``'s ``__init__``) returns at once."""

    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.real.exec_module(module)
        if hasattr(module, "_register") and not hasattr(module, "vineyardctl"):
            module.vineyardctl = _CommandOnFirstUse(module)  # type: ignore[attr-defined]


class _OnFirstUse(types.ModuleType):
    """Stands for a module not imported yet: the first attribute read imports it."""

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self.__name__), attribute)


# vineyard 0.24.2 modules that `import kubernetes` at import time (in try/except ImportError).
_KUBERNETES_USERS = ("vineyard.deploy.utils", "vineyard.deploy.etcd", "vineyard.deploy.kubernetes")


def _defer_kubernetes() -> None:
    if sys.modules.get("kubernetes", 0) is None:
        del sys.modules["kubernetes"]
    for name in _KUBERNETES_USERS:
        user = sys.modules.get(name)
        if user is not None and getattr(user, "kubernetes", 0) is None:
            user.kubernetes = _OnFirstUse("kubernetes")  # type: ignore[attr-defined]


_LOADERS: dict[str, type[_Loader] | type[_CtlLoader]] = {
    "vineyard": _Loader,
    "vineyard.deploy.ctl": _CtlLoader,
}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        wrapper = _LOADERS.get(fullname)
        if wrapper is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = wrapper(spec.loader)
        return spec


def install() -> None:
    """Add the import hook once (idempotent); a no-op when vineyard is already imported."""
    if "vineyard" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
