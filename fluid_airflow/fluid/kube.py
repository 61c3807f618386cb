"""Kubernetes API calls for the Fluid control plane, with errors mapped to named exceptions.

Thin over cncf-kubernetes' ``KubernetesHook`` clients (``custom_object_client``,
``core_v1_client``); transient failures (5xx, 429, connection errors) are retried with backoff,
using cncf-kubernetes' own status set and wait strategy (kubernetes_helper_functions) but not
retrying 409. Everything returns
plain dicts in the API's camelCase form. The local backend (:mod:`.local`) offers the same
methods, so :class:`~fluid_airflow.hooks.fluid.FluidHook` works on either.
"""

from __future__ import annotations

import builtins
import json
from typing import Any

import tenacity
from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import (
    API_RETRIES,
    TRANSIENT_CONNECTION_ERRORS,
    TRANSIENT_STATUS_CODES,
    WaitRetryAfterOrExponential,
)

from fluid_airflow import exceptions as errors
from fluid_airflow.fluid.manifests import GROUP, VERSION

REQUEST_TIMEOUT = 30.0  # seconds per API request; no call may hang


def _transient(exc: BaseException) -> bool:
    """cncf-kubernetes' transient errors, minus 409: for our creates it means AlreadyExists,
    which waiting does not change (cncf retries it for resourceVersion conflicts on updates)."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_STATUS_CODES and exc.status != 409
    return isinstance(exc, TRANSIENT_CONNECTION_ERRORS)


_retry = tenacity.retry(
    stop=tenacity.stop_after_attempt(API_RETRIES),
    wait=WaitRetryAfterOrExponential(),
    retry=tenacity.retry_if_exception(_transient),
    reraise=True,
)


def _status_body(exc: Any) -> dict[str, Any]:
    try:
        return json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}


def map_api_error(exc: Exception, verb: str, resource: str, namespace: str, name: str = "") -> Exception:
    """Turn an ``ApiException`` (or timeout) into the matching named exception.

    ``verb`` and ``resource`` are what we tried (e.g. ``create``, ``datasets.data.fluid.io``).
    """
    from kubernetes.client.exceptions import ApiException

    target = f"{resource} {namespace}/{name}".rstrip("/")
    if not isinstance(exc, ApiException):
        return errors.FluidApiError(f"{verb} {target}: {type(exc).__name__}: {exc} (after retries)")
    body = _status_body(exc)
    message = body.get("message") or exc.reason or ""
    if exc.status == 404 and resource.endswith(GROUP) and "could not find the requested resource" in message:
        return errors.FluidNotInstalledError(
            f"The Kubernetes API has no {resource} (HTTP 404 on the resource type): Fluid's CRDs are not "
            "installed in this cluster. Install Fluid (helm install fluid fluid/fluid -n fluid-system) "
            "or point the fluid connection at a cluster that has it."
        )
    if exc.status == 403:
        return errors.FluidPermissionError(
            f"Forbidden to {verb} {target}: {message}. Grant the Airflow service account RBAC verb "
            f"'{verb}' on '{resource}' in namespace '{namespace}' (Role + RoleBinding)."
        )
    if exc.status == 409:
        return errors.FluidConflictError(f"{verb} {target}: already exists or changed meanwhile ({message})")
    if exc.status == 422:
        causes = body.get("details", {}).get("causes") or []
        fields = "; ".join(f"{c.get('field', '?')}: {c.get('message', '')}" for c in causes) or message
        return errors.FluidSpecError(f"The API rejected the {verb} of {target} (HTTP 422 Invalid): {fields}")
    return errors.FluidApiError(f"{verb} {target}: HTTP {exc.status} {exc.reason}: {message} (after retries)")


class KubernetesFluidClient:
    """CRUD of Datasets/VineyardRuntimes, pods and PVCs through a ``KubernetesHook``.

    :param kube_hook: ``airflow.providers.cncf.kubernetes.hooks.kubernetes.KubernetesHook``.
    :param request_timeout: seconds per request (``_request_timeout`` of the kubernetes client).
    """

    backend = "kubernetes"

    def __init__(self, kube_hook: Any, request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.kube_hook = kube_hook
        self.request_timeout = request_timeout

    def _call(
        self, verb: str, resource: str, namespace: str, name: str, fn: Any, *args: Any, **kw: Any
    ) -> Any:
        from kubernetes.client.exceptions import ApiException

        @_retry
        def attempt() -> Any:
            return fn(*args, _request_timeout=self.request_timeout, **kw)

        try:
            return attempt()
        except ApiException as exc:
            if (
                exc.status == 404
                and verb in ("get", "delete")
                and "could not find the requested" not in (_status_body(exc).get("message") or "")
            ):
                return None
            raise map_api_error(exc, verb, resource, namespace, name) from exc
        except Exception as exc:
            raise map_api_error(exc, verb, resource, namespace, name) from exc

    def _plain(self, obj: Any) -> Any:
        return self.kube_hook.api_client.sanitize_for_serialization(obj)

    # -- Fluid custom resources ----------------------------------------------------------------
    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        api = self.kube_hook.custom_object_client
        return self._call(
            "get", f"{plural}.{GROUP}", namespace, name, api.get_namespaced_custom_object,
            GROUP, VERSION, namespace, plural, name,
        )  # fmt: skip

    def list(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        """Every object of ``plural`` in ``namespace``."""
        api = self.kube_hook.custom_object_client
        found = self._call(
            "list", f"{plural}.{GROUP}", namespace, "", api.list_namespaced_custom_object,
            GROUP, VERSION, namespace, plural,
        )  # fmt: skip
        return list((found or {}).get("items", []))

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the object; 409 raises :class:`FluidConflictError`."""
        meta = body["metadata"]
        api = self.kube_hook.custom_object_client
        return self._call(
            "create", f"{plural}.{GROUP}", meta["namespace"], meta["name"],
            api.create_namespaced_custom_object, GROUP, VERSION, meta["namespace"], plural, body,
        )  # fmt: skip

    def delete(self, plural: str, namespace: str, name: str) -> bool:
        """Request deletion; False when the object was already gone."""
        api = self.kube_hook.custom_object_client
        found = self._call(
            "delete", f"{plural}.{GROUP}", namespace, name, api.delete_namespaced_custom_object,
            GROUP, VERSION, namespace, plural, name,
        )  # fmt: skip
        return found is not None

    # -- core objects --------------------------------------------------------------------------
    # builtins.list: in this class body `list` is the method list() above
    def list_pods(self, namespace: str, label_selector: str = "") -> builtins.list[dict[str, Any]]:
        """Pods of the namespace (optionally by label selector), as dicts."""
        api = self.kube_hook.core_v1_client
        pods = self._call(
            "list", "pods", namespace, "", api.list_namespaced_pod, namespace, label_selector=label_selector
        )
        return [self._plain(p) for p in pods.items]

    def delete_pod(self, namespace: str, name: str) -> bool:
        """Request deletion of a pod; False when it was already gone."""
        api = self.kube_hook.core_v1_client
        return (
            self._call("delete", "pods", namespace, name, api.delete_namespaced_pod, name, namespace)
            is not None
        )

    def get_pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The PersistentVolumeClaim, or None."""
        api = self.kube_hook.core_v1_client
        found = self._call(
            "get", "persistentvolumeclaims", namespace, name, api.read_namespaced_persistent_volume_claim,
            name, namespace,
        )  # fmt: skip
        return None if found is None else self._plain(found)

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap, or None."""
        api = self.kube_hook.core_v1_client
        found = self._call(
            "get", "configmaps", namespace, name, api.read_namespaced_config_map, name, namespace
        )
        return None if found is None else self._plain(found)
