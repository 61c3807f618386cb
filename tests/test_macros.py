"""The provider's template macros (no Airflow run needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fluid_airflow.exceptions import FluidSpecError
from fluid_airflow.fluid.manifests import validate_names
from fluid_airflow.macros import run_dataset_name

RUN_IDS = [
    "scheduled__2026-01-01T00:00:00+00:00",
    "manual__2026-12-04T16:48:51.710448+00:00",
    "backfill__2026-01-02T00:00:00+00:00",
    "my run/with odd_chars",
]


def test_names_are_valid_unique_per_run_and_dag_and_stable():
    names = {run_dataset_name("flights", run_id, "dag_a") for run_id in RUN_IDS}
    names |= {run_dataset_name("flights", run_id, "dag_b") for run_id in RUN_IDS}
    assert len(names) == 2 * len(RUN_IDS)
    for name in names:
        validate_names(name, "default")  # DNS-1035, and Fluid's derived node labels fit
        assert name.startswith("flights-r") and len(name) == len("flights-r") + 10
    run = SimpleNamespace(dag_id="dag_a", run_id=RUN_IDS[0])
    assert run_dataset_name("flights", run) == run_dataset_name("flights", RUN_IDS[0], "dag_a")


def test_longest_prefix_still_fits_fluid_labels():
    validate_names(run_dataset_name("a" * 20, RUN_IDS[0], "d"), "fifteen-chars-x")


@pytest.mark.parametrize("prefix", ["Flights", "1abc", "ends-", "a" * 21, "under_score", ""])
def test_bad_prefix_is_refused_with_the_rule(prefix):
    with pytest.raises(FluidSpecError, match="lower-case letters"):
        run_dataset_name(prefix, RUN_IDS[0], "d")


def test_missing_run_says_what_to_pass():
    with pytest.raises(FluidSpecError, match="dag_run"):
        run_dataset_name("flights", None)


def test_plugin_registers_the_macro():
    from fluid_airflow.plugins.plugin import FluidAirflowPlugin

    assert run_dataset_name in FluidAirflowPlugin.macros
