"""FluidDatasetTrigger: wait in the triggerer for a Fluid Dataset (and its VineyardRuntime).

Readiness rules are :func:`fluid_airflow.fluid.status.evaluate`'s (Dataset ``Bound`` once the
runtime master and one worker are ready, docs/design.md §16; worker counts and phases from the
VineyardRuntime status, §16; master and worker pods labelled ``app=vineyard,release=<dataset>``,
``role`` ``vineyard-master`` or ``vineyard-worker``, §17). On the ``kubernetes`` backend every poll
is a few GETs through cncf-kubernetes' ``AsyncKubernetesHook`` (a ``kubernetes_asyncio`` client), so
the event loop is never blocked; on the ``local`` backend the synchronous
:meth:`FluidHook.readiness` runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from fluid_airflow import exceptions as errors
from fluid_airflow.fluid import manifests, status
from fluid_airflow.fluid.manifests import runtime_pods_selector
from fluid_airflow.hooks.fluid import FluidHook

TARGETS = ("ready", "bound")
REQUEST_TIMEOUT = 30.0  # seconds per API request
MAX_TRANSIENT_ERRORS = 5  # consecutive transient API failures tolerated before an error event
TRANSIENT_STATUS = {429, 500, 502, 503, 504}


def check_target(target: str) -> str:
    """Return ``target``. :raises FluidSpecError: not ``ready`` or ``bound``."""
    if target not in TARGETS:
        raise errors.FluidSpecError(f"target {target!r} is not one of {TARGETS}")
    return target


def apply_target(target: str, verdict: status.Readiness) -> status.Readiness:
    """Re-judge a :class:`~fluid_airflow.fluid.status.Readiness` for ``target``.

    ``ready``: the verdict as is. ``bound``: ready as soon as the Dataset phase is ``Bound``,
    even with fewer workers ready than ``spec.replicas``; failures (Dataset ``Failed`` or being
    deleted, a worker pod that cannot start) still fail.
    """
    if target == "bound" and verdict.phase == "Bound" and not verdict.failed:
        return status.Readiness(status.READY, verdict.phase, verdict.message)
    return verdict


class _PollError(Exception):
    """One poll failed; ``transient`` errors are retried at the next poll."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _api_error(exc: Exception, what: str) -> _PollError:
    """Turn a ``kubernetes_asyncio`` ``ApiException`` or a connection error into a :class:`_PollError`."""
    import aiohttp
    from kubernetes_asyncio.client.exceptions import ApiException

    if not isinstance(exc, ApiException):
        transient = isinstance(exc, (aiohttp.ClientConnectionError, asyncio.TimeoutError, TimeoutError))
        return _PollError(f"GET {what}: {type(exc).__name__}: {exc}", transient)
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason or ""
    except (TypeError, ValueError, AttributeError):
        message = str(exc.body or exc.reason or "")
    text = f"GET {what}: HTTP {exc.status} {exc.reason}: {message}"
    if exc.status == 404:
        text += (
            " (the API has no such resource type: Fluid's CRDs are not installed; install Fluid or point "
            "the fluid connection at a cluster that has it)"
        )
    elif exc.status in (401, 403):
        text += " (grant the Airflow service account RBAC 'get'/'list' on it, or fix the credentials)"
    return _PollError(text, exc.status in TRANSIENT_STATUS)


class FluidDatasetTrigger(BaseTrigger):
    """Poll a Dataset until it reaches ``target``, fails, or ``timeout`` runs out.

    :param fluid_conn_id: Airflow connection of type ``fluid`` (backend, kubeconfig).
    :param namespace: namespace of the Dataset (already resolved, not None).
    :param dataset_name: name of the Dataset and of its VineyardRuntime.
    :param target: ``ready`` (Dataset ``Bound`` and all runtime workers ready, per
        :func:`~fluid_airflow.fluid.status.evaluate`) or ``bound`` (Dataset phase ``Bound``).
    :param timeout: seconds from ``started_at`` until a ``timeout`` event.
    :param poll_interval: seconds between polls.
    :param started_at: wall-clock start (``time.time()``, seconds); set on creation and
        serialized, so a triggerer restart does not extend the deadline.
    :param transient_grace: seconds a worker may stay in ``CrashLoopBackOff`` or an image pull
        error before it counts as failed (:data:`~fluid_airflow.fluid.status.TRANSIENT_GRACE`).
    :raises FluidSpecError: unknown ``target``.

    Yields exactly one ``TriggerEvent`` with keys ``status`` (``ready`` | ``failed`` |
    ``timeout`` | ``error``), ``phase`` (Dataset phase), ``message``, ``namespace``,
    ``dataset_name``. A missing Dataset (HTTP 404) is ``failed``; other API errors, after
    :data:`MAX_TRANSIENT_ERRORS` consecutive transient ones (429, 5xx, connection errors), are
    ``error``.
    """

    def __init__(
        self,
        *,
        fluid_conn_id: str,
        namespace: str,
        dataset_name: str,
        target: str = "ready",
        timeout: float = 600.0,
        poll_interval: float = 5.0,
        started_at: float | None = None,
        transient_grace: float = status.TRANSIENT_GRACE,
    ) -> None:
        super().__init__()
        self.transient_grace = float(transient_grace)
        self.fluid_conn_id = fluid_conn_id
        self.namespace = namespace
        self.dataset_name = dataset_name
        self.target = check_target(target)
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)
        self.started_at = time.time() if started_at is None else float(started_at)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and kwargs, as the triggerer recreates the trigger from them."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "fluid_conn_id": self.fluid_conn_id,
                "namespace": self.namespace,
                "dataset_name": self.dataset_name,
                "target": self.target,
                "timeout": self.timeout,
                "poll_interval": self.poll_interval,
                "transient_grace": self.transient_grace,
                "started_at": self.started_at,
            },
        )

    def _event(self, state: str, phase: str, message: str) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": state,
                "phase": phase,
                "message": message,
                "namespace": self.namespace,
                "dataset_name": self.dataset_name,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until a verdict; yield one event (see the class docstring)."""
        where = f"Dataset {self.namespace}/{self.dataset_name}"
        try:
            probe = await self._probe()
            event = await self._poll(probe)
        except (errors.FluidAirflowError, _PollError) as exc:
            event = self._event("error", "", f"{where}: {exc}")
        except Exception as exc:  # bad connection or kubeconfig: report, do not crash the triggerer
            event = self._event("error", "", f"{where}: {type(exc).__name__}: {exc}")
        yield event

    async def _probe(self) -> Callable[[], Awaitable[status.Readiness]]:
        """A coroutine function giving the current readiness on the connection's backend."""
        from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson

        hook = FluidHook(self.fluid_conn_id)
        conn = await get_async_connection(self.fluid_conn_id, hook=hook)
        hook.extras = await get_async_extra_dejson(conn)  # fills the cached property, no sync call
        if hook.backend == "local":
            return lambda: asyncio.to_thread(hook.readiness, self.namespace, self.dataset_name)
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        args = hook._kube_args()
        extras: dict[str, Any] = {}
        if "config_file" in args:  # the async hook reads the path from extras only
            extras["kube_config_path"] = args.pop("config_file")
            if not os.path.isfile(extras["kube_config_path"]):
                raise errors.FluidSpecError(
                    f"fluid connection {self.fluid_conn_id!r}: kube_config_path "
                    f"{extras['kube_config_path']} does not exist on the triggerer"
                )
        kube = AsyncKubernetesHook(conn_id=None, kubernetes_conn_id=None, connection_extras=extras, **args)
        return lambda: self._kube_readiness(kube)

    async def _kube_readiness(self, kube: Any) -> status.Readiness:
        from kubernetes_asyncio import client as k8s
        from kubernetes_asyncio.client.exceptions import ApiException

        ns, name = self.namespace, self.dataset_name
        async with kube.get_conn() as api_client:
            custom = k8s.CustomObjectsApi(api_client)
            found: dict[str, Any] = {}
            for plural in (manifests.DATASET_PLURAL, manifests.RUNTIME_PLURAL):
                what = f"{plural}.{manifests.GROUP} {ns}/{name}"
                try:
                    found[plural] = await custom.get_namespaced_custom_object(
                        manifests.GROUP, manifests.VERSION, ns, plural, name, _request_timeout=REQUEST_TIMEOUT
                    )
                except ApiException as exc:
                    body = str(exc.body or "")
                    if exc.status != 404 or "could not find the requested resource" in body:
                        raise _api_error(exc, what) from exc
                    found[plural] = None  # the object does not exist
                except Exception as exc:
                    raise _api_error(exc, what) from exc
                if found.get(manifests.DATASET_PLURAL, {}) is None:  # no Dataset: no need for more
                    return status.evaluate(None, None, [])
            try:
                pods = await k8s.CoreV1Api(api_client).list_namespaced_pod(
                    ns, label_selector=runtime_pods_selector(name), _request_timeout=REQUEST_TIMEOUT
                )
            except Exception as exc:
                raise _api_error(exc, f"pods {ns} ({runtime_pods_selector(name)})") from exc
            plain = [api_client.sanitize_for_serialization(p) for p in pods.items]
        return status.evaluate(
            found[manifests.DATASET_PLURAL],
            found[manifests.RUNTIME_PLURAL],
            plain,
            grace=self.transient_grace,
        )

    async def _poll(self, probe: Callable[[], Awaitable[status.Readiness]]) -> TriggerEvent:
        where = f"Dataset {self.namespace}/{self.dataset_name}"
        deadline = self.started_at + self.timeout
        verdict: status.Readiness | None = None
        failures = 0
        last_error = ""
        while True:
            try:
                verdict = apply_target(self.target, await probe())
                failures, last_error = 0, ""
            except _PollError as exc:
                if not exc.transient or failures >= MAX_TRANSIENT_ERRORS:
                    suffix = f" ({failures + 1} failures in a row)" if exc.transient else ""
                    return self._event("error", verdict.phase if verdict else "", f"{where}: {exc}{suffix}")
                failures, last_error = failures + 1, str(exc)
                self.log.warning("%s: transient API error %d, retrying: %s", where, failures, exc)
            if verdict is not None and verdict.ready:
                return self._event("ready", verdict.phase, f"{where} is {self.target}: {verdict.message}")
            if verdict is not None and verdict.failed:
                return self._event("failed", verdict.phase, f"{where} failed: {verdict.message}")
            remaining = deadline - time.time()
            if remaining <= 0:
                phase = verdict.phase if verdict else ""
                detail = verdict.message if verdict else "no successful poll"
                if last_error:
                    detail += f"; last error: {last_error}"
                why = f"not {self.target} after {self.timeout:g} s (phase {phase or '(none)'})"
                return self._event("timeout", phase, f"{where} {why}: {detail}")
            if verdict is not None:
                self.log.info("%s not %s yet: %s", where, self.target, verdict.message)
            await asyncio.sleep(min(self.poll_interval, remaining))
