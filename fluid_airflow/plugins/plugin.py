"""The provider's Airflow plugin (``airflow.plugins`` entry point): run-end release and the UI page.

- ``listeners``: :class:`~fluid_airflow.plugins.release_listener.ReleaseListener` releases a DAG
  run's Vineyard objects when the run ends;
- ``macros``: :mod:`fluid_airflow.macros` as ``{{ macros.fluid_airflow.<name>(...) }}`` in templates;
- ``fastapi_apps``: the handoffs page and its API under ``/fluid`` on the API server
  (:mod:`fluid_airflow.ui.api`), linked from the UI's "Browse" menu and shown as a tab of each
  DAG run, filtered to that run (``external_views``).

Every Airflow process loads plugins (the scheduler and each task process too), so nothing here
imports the page's code until the API server serves its first request (:class:`LazyApp`).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from fluid_airflow.macros import MACROS
from fluid_airflow.plugins.release_listener import ReleaseListener
from fluid_airflow.ui import PAGE, URL_PREFIX


class LazyApp:
    """ASGI app that builds :func:`fluid_airflow.ui.api.build_app` on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from fluid_airflow.ui.api import build_app

            self._app = build_app()
        await self._app(scope, receive, send)


class FluidAirflowPlugin(AirflowPlugin):
    """Registers the release listener, the template macros and the handoffs page."""

    name = "fluid_airflow"
    listeners = [ReleaseListener()]
    macros = MACROS
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "fluid-airflow handoffs"}]
    external_views = [
        {
            "name": "Vineyard handoffs",
            "href": f"{URL_PREFIX}{PAGE}",
            "destination": "nav",
            "category": "browse",
            "url_route": "vineyard-handoffs",
        },
        {
            # A tab on each DAG run's page, filtered to that run: the UI fills in {DAG_ID} and
            # {RUN_ID} for views whose destination is not "nav" (Airflow 3.3.2 UI, plugin
            # external views; airflow/api_fastapi/core_api/datamodels/plugins.py destinations).
            "name": "Vineyard handoffs",
            "href": f"{URL_PREFIX}{PAGE}?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "vineyard-handoffs-run",
        },
    ]
