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
            {
                "integration-name": "Vineyard",
                "external-doc-url": "https://v6d.io/",
                "tags": ["software"],
            },
        ],
        "hooks": [
            {
                "integration-name": "Vineyard",
                "python-modules": ["fluid_airflow.hooks.vineyard"],
            },
        ],
        "connection-types": [
            {
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
                        "description": "host:port of vineyardd's RPC service, used when no IPC socket "
                        "is set (copies data over TCP).",
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "password", "extra", "host", "port"],
                    "relabeling": {},
                    "placeholders": {
                        "ipc_socket": "/var/run/vineyard/vineyard-worker.sock",
                        "rpc_endpoint": "127.0.0.1:9600",
                    },
                },
            },
        ],
        "config": {
            SECTION: {
                "description": "Vineyard XCom backend and local vineyardd.",
                "options": {name: {**spec, "version_added": "0.1.0"} for name, spec in OPTIONS.items()},
            },
        },
    }
