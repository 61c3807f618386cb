"""The handoffs page and its JSON API, mounted by the plugin under ``/fluid`` on the API server.

Every route needs a logged-in Airflow user: the same JWT Airflow's own API takes (the UI's
``_token`` cookie, or ``Authorization: Bearer``), resolved by Airflow's ``get_user``
(``airflow/api_fastapi/core_api/security.py``). Listing shows only DAGs the user may read;
releasing needs edit (``PUT``) permission on the DAG, checked with the auth manager's
``is_authorized_dag``, as Airflow's own DAG run routes do. Payloads are never loaded.

Routes (relative to ``/fluid``): ``GET /handoffs`` (the page), ``GET /api/handoffs?dag_id=&run_id=``,
``POST /api/release/run`` ``{"dag_id", "run_id", "force"}`` (409 for a queued or running run unless
``force``), ``POST /api/release/object`` ``{"name"}``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


NonEmpty = Annotated[str, Field(min_length=1)]  # empty ids answer 422, not 500


class RunRelease(BaseModel):
    dag_id: NonEmpty
    run_id: NonEmpty
    force: bool = False  # release a queued or running run too


class ObjectRelease(BaseModel):
    name: NonEmpty


async def current_user(request: Request) -> Any:
    """The Airflow user of the request (bearer token, else the UI's cookie). 401 without one."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPAuthorizationCredentials

    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    bearer = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if token else None
    return await get_user(request, None, bearer)


UserDep = Annotated[Any, Depends(current_user)]


def _readable_dags(user: Any) -> set[str]:
    from airflow.api_fastapi.app import get_auth_manager

    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def _require_edit(user: Any, dag_id: str) -> None:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    if not get_auth_manager().is_authorized_dag(method="PUT", user=user, details=DagDetails(id=dag_id)):
        raise HTTPException(403, f"not allowed to edit DAG {dag_id!r}, so not allowed to release its objects")


def _client() -> Any:
    from fluid_airflow.exceptions import VineyardConnectionError
    from fluid_airflow.vineyard.xcom import backend_hook

    try:
        return backend_hook().get_conn()
    except VineyardConnectionError as exc:
        raise HTTPException(503, str(exc)) from exc


def _fluid_phases() -> dict[str, Any]:
    """Datasets and VineyardRuntimes when a ``fluid`` connection is configured, else nothing."""
    from airflow.exceptions import AirflowNotFoundException

    from fluid_airflow.hooks.fluid import FluidHook

    try:
        hook = FluidHook()
        return {"backend": hook.backend, "resources": hook.phases()}
    except AirflowNotFoundException:
        return {"backend": None, "resources": []}
    except Exception as exc:  # the page still shows the handoffs
        return {"backend": None, "resources": [], "error": f"{type(exc).__name__}: {exc}"}


def build_app() -> FastAPI:
    """The page's FastAPI app, built on its first request by :class:`~.plugins.plugin.LazyApp`."""
    app = FastAPI(title="fluid-airflow handoffs", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/handoffs", response_class=HTMLResponse)
    async def page(request: Request) -> Any:
        try:
            await current_user(request)
        except HTTPException:
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)))
        from fluid_airflow.ui.page import HTML

        return HTMLResponse(HTML)

    @app.get("/api/handoffs")
    def handoffs(user: UserDep, dag_id: str | None = None, run_id: str | None = None) -> Any:
        return _handoffs(user, dag_id, run_id)

    @app.post("/api/release/run")
    def release_run(body: RunRelease, user: UserDep) -> Any:
        return _release_run(body, user)

    @app.post("/api/release/object")
    def release_object(body: ObjectRelease, user: UserDep) -> Any:
        return _release_object(body, user)

    return app


def _handoffs(user: Any, dag_id: str | None, run_id: str | None) -> dict[str, Any]:
    """Instances, the readable runs' objects (optionally one DAG / run) and Fluid's resources."""
    from fluid_airflow.vineyard.lifecycle import inventory

    readable = _readable_dags(user)
    dags = readable & {dag_id} if dag_id else readable
    client = _client()
    runs = [r for r in inventory.collect(client, dags) if not run_id or r.run_id == run_id]
    return {
        "instances": inventory.instances(client),
        "runs": [r.to_dict() for r in runs],
        "fluid": _fluid_phases(),
    }


def _release_run(body: RunRelease, user: Any) -> dict[str, int]:
    from fluid_airflow.vineyard.lifecycle.release import release_run as release
    from fluid_airflow.vineyard.lifecycle.release import unfinished

    _require_edit(user, body.dag_id)
    problem = None if body.force else unfinished(body.dag_id, body.run_id, 'send "force": true')
    if problem:
        raise HTTPException(409, problem)
    report = release(_client(), body.dag_id, body.run_id)
    log.info(
        "User %s released %d objects of %s/%s", user.get_name(), report.objects, body.dag_id, body.run_id
    )
    return {"objects": report.objects, "bytes": report.bytes}


def _release_object(body: ObjectRelease, user: Any) -> dict[str, int]:
    """Delete one named object (with its migrated copies, unless it is a copy) and drop the names."""
    import vineyard

    from fluid_airflow.vineyard.client.calls import LIST_LIMIT
    from fluid_airflow.vineyard.data.naming import copies_pattern, split_copy_name, split_xcom_object_name
    from fluid_airflow.vineyard.lifecycle.delete import delete_named
    from fluid_airflow.vineyard.lifecycle.migration import held_bytes

    copy = split_copy_name(body.name)
    try:
        dag_id = str(split_xcom_object_name(copy[0] if copy else body.name)["dag_id"])
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    _require_edit(user, dag_id)
    client = _client()
    try:
        object_id = client.get_name(body.name)
    except vineyard.ObjectNotExistsException as exc:
        raise HTTPException(404, f"no Vineyard object named {body.name!r}") from exc
    names = {body.name: object_id}
    if not copy:  # its migrated copies go with it
        names.update(client.list_names(copies_pattern(body.name, repr(object_id)), limit=LIST_LIMIT))
    freed = 0
    for name, oid in names.items():
        with contextlib.suppress(vineyard.ObjectNotExistsException):  # gone: its name is dropped all the same
            freed += held_bytes(client.get_meta(oid))
        delete_named(client, name, oid)
    log.info("User %s released %s (%d bytes)", user.get_name(), body.name, freed)
    return {"objects": len(names), "bytes": freed}
