"""FluidPodOperator: a KubernetesPodOperator whose pod mounts a Fluid Dataset and runs near its data."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchTimeoutException
from airflow.sdk.exceptions import AirflowNotFoundException
from kubernetes.client import models as k8s

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
    on the cache-node label read from the PVC (docs/design.md §19), :func:`~.pods.object_affinity`
    on the nodes running the vineyardd instances that hold ``input_refs`` (a vineyardd host is its
    worker pod's IP, mapped to that pod's node by :meth:`FluidHook.worker_nodes`), and label
    ``fluid-airflow/dataset: <dataset_name>``.

    The pod is placed in the Dataset's namespace (a pod can only mount a PVC of its own
    namespace). The mutation hook (``pod_mutation_hook``) runs before these changes.

    :param dataset_name: the Dataset (templated); its PVC has the same name.
    :param dataset_namespace: templated; default: ``namespace`` if given, else the ``fluid``
        connection's namespace.
    :param data_affinity: ``preferred`` (default, weight 100), ``required`` (only cache nodes; the
        pod may stay Pending when they are full; the task then fails after
        ``schedule_timeout_seconds`` with :class:`~fluid_airflow.exceptions.FluidSchedulingError`
        naming the affinity and the scheduler's reason) or ``none``.
    :param fluid_conn_id: Airflow connection of type ``fluid`` (``kubernetes`` backend), used to read
        the PVC's labels and the Dataset's vineyardd worker pods.
    :param input_refs: Vineyard XCom references of the task's inputs (templated; a list, or an
        XComArg of an upstream task's result). Resolved as references, so no payload is loaded
        in the Airflow worker; each node holding some gets a preferred term weighted by bytes.
    :raises FluidSpecError: bad ``data_affinity`` (at construction); at build time, a bad Dataset
        name, a ``namespace`` other than ``dataset_namespace``, a non-reference in ``input_refs``,
        the local backend (also checked first thing in :meth:`execute`), or a missing container or
        mount-path clash.
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
        # A retry recomputes in a fresh pod by default. With reattaching (KPO's default: durable=True
        # on Airflow 3.3), KPO reuses a previous try's pod that is not Succeeded/Failed (e.g. still
        # running after a worker crash), and a finished one too when on_finish_action keeps it
        # (cncf-kubernetes 10.25 operators/pod.py get_or_create_pod, process_pod_deletion): the retry
        # would report that pod's outcome instead of running the task again. A user who asks for
        # reattaching (durable or the deprecated reattach_on_restart) gets it: KPO lets durable win
        # over reattach_on_restart (operators/pod.py __init__), so durable is only set when neither is.
        if kwargs.get("durable") is None and kwargs.get("reattach_on_restart") is None:
            kwargs["durable"] = False
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

    def execute(self, context: Any) -> Any:
        """Check the backend, then run the pod as KPO does (sync or deferrable).

        :raises FluidSpecError: the ``fluid`` connection uses the local backend (before KPO
            touches Kubernetes, which would fail with a raw ``ConfigException``).
        """
        self._require_kubernetes_backend()
        self._unscheduled: str | None = None
        with self._naming_an_unscheduled_pod():
            return super().execute(context)

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        """As KPO's (deferrable mode); a pod the trigger saw time out Pending fails with
        :class:`~fluid_airflow.exceptions.FluidSchedulingError` naming its data affinity.

        The trigger reports a pod not started within ``schedule_timeout_seconds`` as a ``timeout`` event
        (cncf-kubernetes 10.25 ``triggers/pod.py``, ``PodLaunchTimeoutException``); the pod is read before
        KPO's cleanup deletes it.
        """
        self._unscheduled = None
        if event.get("status") == "timeout":
            where = k8s.V1ObjectMeta(name=event["name"], namespace=event["namespace"])
            self._unscheduled = self._unscheduled_message(k8s.V1Pod(metadata=where))
        with self._naming_an_unscheduled_pod():
            return super().trigger_reentry(context, event)

    @contextlib.contextmanager
    def _naming_an_unscheduled_pod(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if self._unscheduled:  # KPO's cleanup error hides why the pod never started: say it first
                raise errors.FluidSchedulingError(f"{self._unscheduled}\n{exc}") from exc
            raise

    def _require_kubernetes_backend(self) -> None:
        try:
            backend = FluidHook(self.fluid_conn_id).backend
        except AirflowNotFoundException:
            return  # no fluid connection: KPO's kubernetes_conn_id alone decides where the pod runs
        if backend != "kubernetes":
            raise errors.FluidSpecError(
                f"FluidPodOperator {self.task_id!r} runs a pod, but fluid connection {self.fluid_conn_id!r} "
                f"uses the {backend} backend, which has no Kubernetes cluster to run it on. For a Python "
                "step use @task.fluid (a local process on the local backend), or point the connection at a "
                "cluster: extra backend 'kubernetes' with kube_config_path, kube_config or in_cluster."
            )

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
        Fluid would use the Dataset's UID instead), and object affinity is left out (the nodes
        of the vineyardd hosts are read from the API).

        :raises FluidSpecError: see the class.
        """
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        name = self.dataset_name
        pods.validate_dataset_name(name)
        namespace = self._namespace(pod, dry_run)
        pods.host_bytes(self.input_refs)  # checks input_refs before any request
        pod.metadata.namespace = namespace
        pod = pods.mount_dataset(pod, name, container_name=self.base_container_name)
        if self.data_affinity != "none":
            key = self._label_key(namespace, name, dry_run)
            if key:
                pod = pods.data_affinity(pod, key, self.data_affinity)
        if self.input_refs and not dry_run:
            nodes = self._kubernetes_hook().worker_nodes(namespace, name)
            pod = pods.object_affinity(pod, self.input_refs, nodes, located=self._located())
        pod.metadata.labels = {**(pod.metadata.labels or {}), pods.DATASET_LABEL: name}
        return pod

    def await_pod_start(self, pod: Any) -> None:
        """KPO's wait; when the pod was never scheduled, remember why for :meth:`execute`."""
        try:
            super().await_pod_start(pod)
        except PodLaunchTimeoutException:
            self._unscheduled = self._unscheduled_message(pod)
            raise

    def _unscheduled_message(self, pod: Any) -> str | None:
        """What kept ``pod`` Pending, naming its data affinity; None when it was scheduled."""
        try:
            remote = self.pod_manager.read_pod(pod)
        except Exception as exc:  # the report is best effort; KPO's own error still stands
            self.log.warning("Could not read pod %s to explain the timeout: %s", pod.metadata.name, exc)
            return None
        conditions = (remote.status and remote.status.conditions) or []
        cond = next((c for c in conditions if c.type == "PodScheduled"), None)
        if cond is not None and cond.status == "True":
            return None
        scheduler = f"{cond.reason}: {cond.message}" if cond is not None else "no scheduling decision yet"
        where = f"Pod {remote.metadata.namespace}/{remote.metadata.name}"
        timeout = f"schedule_timeout_seconds ({self.schedule_timeout_seconds} s)"
        if self.data_affinity != "required":
            return f"{where} was not scheduled within {timeout} ({scheduler})."
        return (
            f"{where} was not scheduled within {timeout}: its data affinity is 'required', so only the "
            f"cache nodes of Dataset {remote.metadata.namespace}/{self.dataset_name} qualify (node "
            f"affinity {self._required_terms(remote)}), and none could take it ({scheduler}). Use "
            "data_affinity='preferred' to run on another node and read the data over RPC, or free, "
            "uncordon or add cache nodes (more VineyardRuntime replicas)."
        )

    @staticmethod
    def _required_terms(pod: Any) -> str:
        affinity = pod.spec.affinity and pod.spec.affinity.node_affinity
        required = affinity and affinity.required_during_scheduling_ignored_during_execution
        terms = (required and required.node_selector_terms) or []
        return " or ".join(
            " and ".join(f"{e.key} {e.operator} {e.values}" for e in t.match_expressions or []) for t in terms
        )

    def _kubernetes_hook(self) -> FluidHook:
        hook = FluidHook(self.fluid_conn_id)
        if hook.backend != "kubernetes":
            raise errors.FluidSpecError(
                f"FluidPodOperator {self.task_id!r}: fluid connection {self.fluid_conn_id!r} uses the "
                f"{hook.backend} backend; task pods need a Kubernetes cluster running Fluid."
            )
        return hook

    def _located(self) -> dict[str, int] | None:
        """Bytes per host from Vineyard's metadata when this worker reaches the backend's
        vineyardd (it then also sees migrated copies); None (use the recorded hosts) otherwise."""
        from fluid_airflow.exceptions import VineyardConnectionError
        from fluid_airflow.vineyard.lifecycle import locations
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
        pvc = self._kubernetes_hook().client.get_pvc(namespace, name)
        if pvc is None:
            self.log.warning(
                "PVC %s/%s not found: the Dataset is not Bound yet (or was cleaned up). The pod cannot be "
                "scheduled without it, and KubernetesPodOperator fails the task after "
                "schedule_timeout_seconds (%s s). Run the bind task first.",
                namespace,
                name,
                self.schedule_timeout_seconds,
            )
        return pods.cache_label_key(pvc, namespace, name)
