"""The package's requirements accept pandas 2 and 3, and pip keeps the pandas it finds.

``make test`` builds ``.venv-pandas3`` by installing pandas 3 first and the package after it
(with the other pins of constraints.txt), and fails if pip replaced pandas; these tests run in
both venvs and check what that install left.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pandas as pd
from packaging.requirements import Requirement


def _requirement(name: str) -> Requirement:
    for text in importlib.metadata.requires("fluid-airflow") or []:
        requirement = Requirement(text)
        if requirement.name == name and requirement.marker is None:
            return requirement
    raise AssertionError(f"fluid-airflow does not require {name}")


def test_pandas_2_and_3_both_satisfy_the_package():
    specifier = _requirement("pandas").specifier
    assert specifier.contains("2.3.3") and specifier.contains("3.1.1")
    assert specifier.contains(pd.__version__)


def test_every_installed_requirement_is_satisfied():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
