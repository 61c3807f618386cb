"""vineyard imports with every setuptools, without warnings (fluid_airflow/_vineyard_import.py).

The test venv has the newest setuptools (the Makefile upgrades it), which has no
``pkg_resources``; setuptools 80-81 have one that warns when imported, simulated here by a
module of the same name and warning text first on ``sys.path``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration  # fresh interpreters, venvs, daemons

CHECK = textwrap.dedent(
    """
    import sys
    import fluid_airflow
    import vineyard
    from vineyard.deploy.utils import find_vineyardd_path
    assert find_vineyardd_path().endswith("vineyardd"), find_vineyardd_path()
    print("pkg_resources" in sys.modules)
    """
)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=120,
    )


def test_this_environment_has_a_setuptools_without_pkg_resources():
    # What makes the next test meaningful: a plain `import vineyard` fails here.
    plain = _python("import vineyard")
    assert plain.returncode != 0 and "No module named 'pkg_resources'" in plain.stderr


def test_vineyard_imports_without_pkg_resources_and_leaves_no_stand_in():
    done = _python(CHECK)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # the stand-in is gone once vineyard is imported
    assert done.stderr == ""


def test_the_deprecated_pkg_resources_warns_no_more(tmp_path):
    (tmp_path / "pkg_resources.py").write_text(
        textwrap.dedent(
            """
            import warnings
            warnings.warn("pkg_resources is deprecated as an API. See https://setuptools.pypa.io/en/"
                          "latest/pkg_resources.html.", UserWarning, stacklevel=2)
            import importlib.resources
            def resource_filename(package, name):
                return str(importlib.resources.files(package).joinpath(name))
            """
        )
    )
    without_us = _python("import vineyard", PYTHONPATH=str(tmp_path))
    assert "pkg_resources is deprecated" in without_us.stderr  # the warning users saw
    done = _python(CHECK, PYTHONPATH=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"  # the real (old-setuptools) module stays
    assert done.stderr == ""


DEFERRED = textwrap.dedent(
    """
    import subprocess, sys
    runs = []
    popen = subprocess.Popen.__init__
    def spy(self, args, *more, **kwargs):
        runs.append(str(args))
        popen(self, args, *more, **kwargs)
    subprocess.Popen.__init__ = spy
    import fluid_airflow
    import vineyard
    assert "kubernetes" not in sys.modules, "the kubernetes client was imported"
    assert not [r for r in runs if "vineyardctl" in r], runs
    import vineyard.deploy.kubernetes as k8s
    import vineyard.deploy.utils as utils
    import kubernetes.client
    assert utils.kubernetes.client.CoreV1Api is kubernetes.client.CoreV1Api
    assert k8s.kubernetes.config.load_kube_config is kubernetes.config.load_kube_config
    assert vineyard.deploy.vineyardctl.deploy is not None  # a subcommand of vineyard's own command
    assert [r for r in runs if "vineyardctl" in r], "vineyardctl never ran"
    assert vineyard.deploy.vineyardctl is vineyard.deploy.ctl.vineyardctl
    assert type(vineyard.deploy.vineyardctl).__name__ != "_CommandOnFirstUse"
    print("ok")
    """
)


def test_kubernetes_client_and_vineyardctl_wait_for_first_use():
    # 0.7 s of every task process's vineyard import (measured): vineyard's Kubernetes helpers and its
    # vineyardctl command still work, built when first used.
    done = _python(DEFERRED)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok" and done.stderr == ""
