"""FluidPodOperator: a KubernetesPodOperator whose pod mounts a Fluid Dataset and runs near its data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowNotFoundException

from fluid_airflow import exceptions as errors
from fluid_airflow.fluid import manifests, pods
from fluid_airflow.hooks.fluid import FluidHook
from fluid_airflow.links import VineyardHandoffsLink


class FluidPodOperator(KubernetesPodOperator):
    """Run a pod that mounts Dataset ``dataset_name`` (its Vineyard) and is placed near the data.

    Every ``KubernetesPodOperator`` argument works as there. After KPO has built the pod (so
    after template rendering: XComArgs and Jinja in ``env_vars``, ``arguments``, ``volumes``...
    are already resolved), :meth:`build_pod_request_obj` applies, in this order
    (:mod:`fluid_airflow.fluid.pods`): :func:`~.pods.mount_dataset` into the base container
    (PVC ``dataset_name`` at ``/var/run/vineyard``, ``VINEYARD_CONFIG``), :func:`~.pods.data_affinity`
    on the cache-node label read from the PVC (fluid.md 5.1, 5.3), :func:`~.pods.object_affinity`
    on the hosts of ``input_refs``, and label ``fluid-airflow/dataset: <dataset_name>``.

    The pod is placed in the Dataset's namespace (a pod can only mount a PVC of its own
    namespace). The mutation hook (``pod_mutation_hook``) runs before these changes.

    :param dataset_name: the Dataset (templated); its PVC has the same name.
    :param dataset_namespace: templated; default: ``namespace`` if given, else the ``fluid``
        connection's namespace.
    :param data_affinity: ``preferred`` (default, weight 100), ``required`` (only cache nodes; the
        pod may stay Pending when they are full) or ``none``.
    :param fluid_conn_id: Airflow connection of type ``fluid`` (``kubernetes`` backend), used to read
        the PVC's labels.
    :param input_refs: Vineyard XCom references of the task's inputs (templated; a list, or an
        XComArg of an upstream task's result). Resolved as references, so no payload is loaded
        in the Airflow worker; each host holding some gets a preferred term weighted by bytes.
    :raises FluidSpecError: bad ``data_affinity`` (at construction); at build time, a bad Dataset
        name, a ``namespace`` other than ``dataset_namespace``, a non-reference in ``input_refs``,
        the local backend, or a missing container or mount-path clash.
    """

    operator_extra_links = (*KubernetesPodOperator.operator_extra_links, VineyardHandoffsLink())
    template_fields: Sequence[str] = (
        *KubernetesPodOperator.template_fields,
        "dataset_name",
        "dataset_namespace",
        "input_refs",
    )

    def __init__(
        self,
        *,
        dataset_name: str,
        dataset_namespace: str | None = None,
        data_affinity: str = "preferred",
        fluid_conn_id: str = FluidHook.default_conn_name,
        input_refs: Any = None,
        **kwargs: Any,
    ) -> None:
        # A retry recomputes in a fresh pod: reattaching (KPO's durable default on Airflow 3.3)
        # would hand a retried try the failed try's pod and its outputs.
        kwargs.setdefault("durable", False)
        super().__init__(**kwargs)
        if data_affinity not in pods.AFFINITY_MODES:
            raise errors.FluidSpecError(
                f"FluidPodOperator {self.task_id!r}: data_affinity {data_affinity!r}; use one of "
                f"{pods.AFFINITY_MODES}"
            )
        self.dataset_name = dataset_name
        self.dataset_namespace = dataset_namespace
        self.data_affinity = data_affinity
        self.fluid_conn_id = fluid_conn_id
        self.input_refs = input_refs

    def _do_render_template_fields(
        self, parent: Any, template_fields: Any, context: Any, jinja_env: Any, seen_oids: set[int]
    ) -> None:
        fields = list(template_fields)
        if parent is not self or "input_refs" not in fields:
            super()._do_render_template_fields(parent, fields, context, jinja_env, seen_oids)
            return
        from fluid_airflow.vineyard.xcom import references_only

        others = [f for f in fields if f != "input_refs"]
        super()._do_render_template_fields(parent, others, context, jinja_env, seen_oids)
        with references_only():  # the references, not the arrays/DataFrames behind them
            super()._do_render_template_fields(parent, ["input_refs"], context, jinja_env, seen_oids)
            refs = self.input_refs
            if isinstance(refs, Sequence) and not isinstance(refs, (str, list, tuple)):
                self.input_refs = list(refs)  # a mapped upstream's lazy sequence: pull it here

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> Any:
        """KPO's pod, with the Dataset mounted, data and object affinity, and our label.

        ``dry_run=True`` makes no API call: the documented label key
        ``fluid.io/s-<ns>-<dataset>`` is used (data affinity is left out, with a warning, when
        Fluid would use the Dataset's UID instead).

        :raises FluidSpecError: see the class.
        """
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        name = self.dataset_name
        pods.validate_dataset_name(name)
        namespace = self._namespace(pod, dry_run)
        pods.host_weights(self.input_refs)  # checks input_refs before any request
        pod.metadata.namespace = namespace
        pod = pods.mount_dataset(pod, name, container_name=self.base_container_name)
        if self.data_affinity != "none":
            key = self._label_key(namespace, name, dry_run)
            if key:
                pod = pods.data_affinity(pod, key, self.data_affinity)
        pod = pods.object_affinity(pod, self.input_refs, located=self._located())
        pod.metadata.labels = {**(pod.metadata.labels or {}), pods.DATASET_LABEL: name}
        return pod

    def _located(self) -> dict[str, int] | None:
        """Bytes per host from Vineyard's metadata when this worker reaches the backend's
        vineyardd (it then also sees migrated copies); None (use the recorded hosts) otherwise."""
        if not self.input_refs:
            return None
        from fluid_airflow.exceptions import VineyardConnectionError
        from fluid_airflow.vineyard import locations
        from fluid_airflow.vineyard.xcom import backend_hook

        try:
            located = locations.host_bytes(backend_hook().get_conn(), self.input_refs)
        except VineyardConnectionError as exc:
            self.log.info("Object affinity from the references' recorded hosts (%s)", exc)
            return None
        return located or None  # none of them in that vineyardd: another cluster's objects

    def _namespace(self, pod: Any, dry_run: bool) -> str:
        namespace = self.dataset_namespace or self.namespace
        if not namespace:
            try:
                namespace = FluidHook(self.fluid_conn_id).namespace()
            except AirflowNotFoundException as exc:  # no fluid connection: fine for a dry run only
                if not dry_run:
                    raise
                self.log.warning("Dry run: %s; using the pod's namespace", exc)
                namespace = pod.metadata.namespace
        pods.validate_namespace(namespace)
        if self.namespace and self.namespace != namespace:
            raise errors.FluidSpecError(
                f"FluidPodOperator {self.task_id!r}: namespace {self.namespace!r} differs from "
                f"dataset_namespace {namespace!r}; a pod can only mount the PVC of a Dataset in its own "
                "namespace. Leave one of them unset."
            )
        if pod.metadata.namespace and pod.metadata.namespace != namespace:
            self.log.info(
                "Placing pod in the Dataset's namespace %s (not %s)", namespace, pod.metadata.namespace
            )
        return namespace

    def _label_key(self, namespace: str, name: str, dry_run: bool) -> str | None:
        if dry_run:
            key = manifests.cache_node_label_key(namespace, name)
            if len(key) < pods.UID_KEY_LENGTH:
                return key
            self.log.warning(
                "Dry run: Fluid labels the cache nodes of %s/%s by UID; no data affinity", namespace, name
            )
            return None
        hook = FluidHook(self.fluid_conn_id)
        if hook.backend != "kubernetes":
            raise errors.FluidSpecError(
                f"FluidPodOperator {self.task_id!r}: fluid connection {self.fluid_conn_id!r} uses the "
                f"{hook.backend} backend; task pods need a Kubernetes cluster running Fluid."
            )
        pvc = hook.client.get_pvc(namespace, name)
        if pvc is None:
            self.log.warning(
                "PVC %s/%s not found: Dataset not Bound yet; the pod waits in Pending until it is.",
                namespace,
                name,
            )
        return pods.cache_label_key(pvc, namespace, name)
