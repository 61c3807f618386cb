"""FluidBindVineyardRuntimeOperator: bind a VineyardRuntime to a Dataset and wait until usable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, conf

from fluid_airflow import exceptions as errors
from fluid_airflow.fluid import manifests, status
from fluid_airflow.hooks.fluid import FluidHook


class FluidBindVineyardRuntimeOperator(BaseOperator):
    """Create (or adopt) the VineyardRuntime of ``namespace/dataset_name`` and wait for it.

    Waits until the Dataset is ``Bound`` **and** every worker is ready (Fluid's own Vineyard
    health check is a stub upstream, so ``Bound`` alone is not enough); fails as soon as the
    Dataset is ``Failed`` or a worker pod cannot start, naming phases, conditions and pods.

    :param dataset_name: the Dataset to bind (the runtime gets the same name).
    :param namespace: default: the ``fluid`` connection's namespace.
    :param replicas: vineyardd workers (cache nodes), >= 1.
    :param cache_capacity: Kubernetes quantity per worker (``30Gi``); vineyardd's shared memory for MEM.
    :param cache_medium: ``MEM``, the only tiered store Fluid v1.0.8 deploys for Vineyard
        (an SSD/HDD level alone never comes up; refused before any request).
    :param tier_path: must be None: Fluid ignores a MEM level's path (refused).
    :param master: ``spec.master`` fields; :param worker: ``spec.worker``; :param fuse: ``spec.fuse``.
    :param network_mode: ``HostNetwork`` (Fluid's default) or ``ContainerNetwork``.
    :param pod_metadata: ``{"labels": ..., "annotations": ...}`` for the runtime's pods.
    :param wait: wait for readiness (default True).
    :param timeout: seconds to wait for readiness.
    :param poll_interval: seconds between readiness checks.
    :param transient_grace: seconds a worker pod may stay in ``CrashLoopBackOff``, ``ErrImagePull``
        or ``ImagePullBackOff`` before the bind fails (default
        :data:`~fluid_airflow.fluid.status.TRANSIENT_GRACE`, 300: a vineyardd worker restarts until
        the master's etcd answers, waiting 120 s each time).
    :param deferrable: wait in the triggerer (``FluidDatasetTrigger``) instead of a worker slot.
    :param fluid_conn_id: Airflow connection of type ``fluid``.
    :returns: (XCom) ``{"namespace", "name", "backend", "mount_path", "ipc_socket"}``;
        ``ipc_socket`` is the local vineyardd's socket on the local backend, else None (pods
        mount the Dataset's PVC at ``mount_path``).
    :raises FluidSpecError, FluidConflictError: bad input, or a runtime with another spec exists.
    :raises FluidRuntimeFailedError: the Dataset or a worker failed.
    :raises FluidTimeoutError: not ready within ``timeout``.
    """

    template_fields: Sequence[str] = ("dataset_name", "namespace", "cache_capacity")
    ui_color = "#c6ffd8"

    def __init__(
        self,
        *,
        dataset_name: str,
        namespace: str | None = None,
        replicas: int = 1,
        cache_capacity: str = "4Gi",
        cache_medium: str = "MEM",
        tier_path: str | None = None,
        master: dict[str, Any] | None = None,
        worker: dict[str, Any] | None = None,
        fuse: dict[str, Any] | None = None,
        network_mode: str | None = None,
        pod_metadata: dict[str, Any] | None = None,
        wait: bool = True,
        timeout: float = 600.0,
        poll_interval: float = 5.0,
        transient_grace: float = status.TRANSIENT_GRACE,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        fluid_conn_id: str = FluidHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset_name = dataset_name
        self.namespace = namespace
        self.replicas = replicas
        self.cache_capacity = cache_capacity
        self.cache_medium = cache_medium
        self.tier_path = tier_path
        self.master = master
        self.worker = worker
        self.fuse = fuse
        self.network_mode = network_mode
        self.pod_metadata = pod_metadata
        self.wait = wait
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.transient_grace = transient_grace
        self.deferrable = deferrable
        self.fluid_conn_id = fluid_conn_id

    def execute(self, context: Any) -> dict[str, Any] | None:
        hook = FluidHook(self.fluid_conn_id)
        namespace = hook.namespace(self.namespace)
        manifest = manifests.build_vineyard_runtime(
            self.dataset_name, namespace, replicas=self.replicas, cache_capacity=self.cache_capacity,
            cache_medium=self.cache_medium, tier_path=self.tier_path, master=self.master,
            worker=self.worker, fuse=self.fuse, network_mode=self.network_mode,
            pod_metadata=self.pod_metadata,
        )  # fmt: skip
        _, created = hook.ensure(manifests.RUNTIME_PLURAL, manifest)
        self.log.info(
            "VineyardRuntime %s/%s %s", namespace, self.dataset_name, "created" if created else "adopted"
        )
        if self.wait and self.deferrable:
            from fluid_airflow.triggers.fluid import FluidDatasetTrigger

            self.defer(
                trigger=FluidDatasetTrigger(
                    fluid_conn_id=self.fluid_conn_id,
                    namespace=namespace,
                    dataset_name=self.dataset_name,
                    target="ready",
                    timeout=self.timeout,
                    poll_interval=self.poll_interval,
                    transient_grace=self.transient_grace,
                ),
                method_name="execute_complete",
            )
        if self.wait:
            verdict = hook.wait_ready(
                namespace, self.dataset_name, self.timeout, self.poll_interval, self.transient_grace
            )
            self.log.info("Dataset %s/%s ready: %s", namespace, self.dataset_name, verdict.message)
        return self._result(hook, namespace)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after :class:`~fluid_airflow.triggers.fluid.FluidDatasetTrigger`.

        :raises FluidRuntimeFailedError, FluidTimeoutError, FluidApiError: per the event.
        """
        where = f"Dataset {event.get('namespace')}/{event.get('dataset_name')}"
        state, message = event.get("status"), event.get("message", "")
        if state == "failed":
            raise errors.FluidRuntimeFailedError(f"{where} failed: {message}")
        if state == "timeout":
            raise errors.FluidTimeoutError(f"{where} not ready after {self.timeout:g} s: {message}")
        if state != "ready":
            raise errors.FluidApiError(f"{where}: waiting failed: {message}")
        hook = FluidHook(self.fluid_conn_id)
        return self._result(hook, hook.namespace(self.namespace))

    def _result(self, hook: FluidHook, namespace: str) -> dict[str, Any]:
        local = hook.backend == "local"
        return {
            "namespace": namespace,
            "name": self.dataset_name,
            "backend": hook.backend,
            "mount_path": manifests.VINEYARD_MOUNT_PATH,
            "ipc_socket": hook.client.ipc_socket(namespace, self.dataset_name) if local else None,
        }
