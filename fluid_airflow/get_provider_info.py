"""Provider metadata read by Airflow's ProvidersManager.

Registered through the ``apache_airflow_provider`` entry point (pyproject.toml). The schema is
``airflow/provider_info.schema.json``; ``package-name`` must equal the distribution name.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    """Return the provider info dict (plain data; imports nothing heavy)."""
    from fluid_airflow import __version__
    from fluid_airflow.config import OPTIONS, SECTION

    return {
        "package-name": "fluid-airflow",
        "name": "Fluid and Vineyard",
        "description": "In-memory XCom handoffs through Vineyard, and Fluid Datasets and "
        "VineyardRuntimes on Kubernetes.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "Vineyard", "external-doc-url": "https://v6d.io/", "tags": ["software"]},
            {
                "integration-name": "Fluid",
                "external-doc-url": "https://fluid-cloudnative.github.io/",
                "tags": ["software"],
            },
        ],
        "hooks": [
            {"integration-name": "Vineyard", "python-modules": ["fluid_airflow.hooks.vineyard"]},
            {"integration-name": "Fluid", "python-modules": ["fluid_airflow.hooks.fluid"]},
        ],
        "operators": [
            {
                "integration-name": "Fluid",
                "python-modules": [
                    "fluid_airflow.operators.dataset",
                    "fluid_airflow.operators.runtime",
                    "fluid_airflow.operators.cleanup",
                    "fluid_airflow.operators.pod",
                    "fluid_airflow.operators.release",
                ],
            },
        ],
        "sensors": [{"integration-name": "Fluid", "python-modules": ["fluid_airflow.sensors.fluid"]}],
        "triggers": [{"integration-name": "Fluid", "python-modules": ["fluid_airflow.triggers.fluid"]}],
        # No "plugins" entry: the plugin is registered once, by the ``airflow.plugins`` entry
        # point (pyproject.toml), which Airflow loads in every process; provider-info plugins load
        # only with [core] lazy_discover_providers = False, and then twice ("already registered").
        "extra-links": ["fluid_airflow.links.VineyardHandoffsLink"],
        "task-decorators": [{"name": "fluid", "class-name": "fluid_airflow.decorators.fluid.fluid_task"}],
        "connection-types": [
            _vineyard_connection(),
            _fluid_connection(),
        ],
        "config": {
            SECTION: {
                "description": "Vineyard XCom backend and local vineyardd.",
                "options": {
                    name: {
                        **{k: v for k, v in spec.items() if k not in ("unit", "min", "hint")},
                        "version_added": "0.1.0",
                    }
                    for name, spec in OPTIONS.items()
                },
            },
        },
    }


def _vineyard_connection() -> dict[str, Any]:
    """The ``vineyard`` connection type: what :class:`~.hooks.vineyard.VineyardHook` reads."""
    return {
        "connection-type": "vineyard",
        "hook-class-name": "fluid_airflow.hooks.vineyard.VineyardHook",
        "hook-name": "Vineyard",
        "conn-fields": {
            "ipc_socket": {
                "label": "IPC socket",
                "schema": {"type": ["string", "null"]},
                "description": "Path of vineyardd's UNIX socket (zero-copy, same node).",
            },
            "rpc_endpoint": {
                "label": "RPC endpoint",
                "schema": {"type": ["string", "null"]},
                "description": "host:port of vineyardd's RPC service (several: comma-separated, tried "
                "in order), used when the IPC socket is not set or not on this host (copies data over TCP).",
            },
            "dataset": {
                "label": "Fluid Dataset",
                "schema": {"type": ["string", "null"]},
                "description": "<namespace>/<name> of a Fluid Dataset: its workers over RPC, at the "
                "endpoints Fluid publishes, when the IPC socket is not set or not on this host.",
            },
            "fluid_conn_id": {
                "label": "Fluid connection",
                "schema": {"type": ["string", "null"]},
                "description": "The fluid connection that reads the Dataset's endpoints (fluid_default).",
            },
        },
        "ui-field-behaviour": {
            # host + port are read too: another way to give the RPC endpoint.
            "hidden-fields": ["schema", "login", "password", "extra"],
            "relabeling": {"host": "RPC host (or use RPC endpoint)", "port": "RPC port"},
            "placeholders": {
                "ipc_socket": "/var/run/vineyard/vineyard-worker.sock",
                "rpc_endpoint": "127.0.0.1:9600",
                "dataset": "airflow/airflow-xcom",
                "fluid_conn_id": "fluid_default",
                "host": "127.0.0.1",
                "port": "9600",
            },
        },
    }


def _fluid_connection() -> dict[str, Any]:
    """The ``fluid`` connection type: what :class:`~.hooks.fluid.FluidHook` reads."""
    return {
        "connection-type": "fluid",
        "hook-class-name": "fluid_airflow.hooks.fluid.FluidHook",
        "hook-name": "Fluid",
        "conn-fields": {
            "backend": {
                "label": "Backend",
                "schema": {"type": ["string", "null"], "enum": ["kubernetes", "local", None]},
                "description": "kubernetes (default): Fluid on a cluster; local: a local vineyardd "
                "per Dataset, no Kubernetes.",
            },
            "namespace": {
                "label": "Namespace",
                "schema": {"type": ["string", "null"]},
                "description": "Default namespace of Datasets (default: default).",
            },
            "kube_config_path": {
                "label": "Kube config path",
                "schema": {"type": ["string", "null"]},
            },
            "kube_config": {
                "label": "Kube config (JSON or YAML)",
                "schema": {"type": ["string", "null"], "format": "password"},
            },
            "in_cluster": {
                "label": "In cluster configuration",
                "schema": {"type": ["boolean", "null"]},
            },
            "cluster_context": {
                "label": "Cluster context",
                "schema": {"type": ["string", "null"]},
            },
            "local_max_cache": {
                "label": "Local backend: max cache per Dataset",
                "schema": {"type": ["string", "null"]},
                "description": "Quantity capping each local vineyardd (default 2Gi).",
            },
        },
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "login", "password", "extra", "host", "port"],
            "relabeling": {},
            "placeholders": {"namespace": "default", "backend": "kubernetes"},
        },
    }
