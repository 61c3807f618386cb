"""FluidHook: Fluid Datasets and VineyardRuntimes on Kubernetes, or on the local backend.

Connection type ``fluid`` (extras declared as ``conn-fields``): ``backend`` (``kubernetes``,
default, or ``local``), ``namespace`` (default ``default``), and for Kubernetes one of
``kube_config_path``, ``kube_config`` (inline JSON/YAML) or ``in_cluster``, plus optional
``cluster_context``. For ``local``: ``local_max_cache`` (default ``2Gi``) caps the shared memory
of the local vineyardd that stands in for a VineyardRuntime, whose cache capacity is sized for a
cluster. API calls go through cncf-kubernetes' ``KubernetesHook``.
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from fluid_airflow import exceptions as errors
from fluid_airflow.fluid import manifests, status
from fluid_airflow.fluid.compare import spec_differences

POLL_INTERVAL = 5.0


class FluidHook(BaseHook):
    """Create, inspect, wait for and delete Fluid objects.

    :param fluid_conn_id: Airflow connection of type ``fluid``.
    """

    conn_name_attr = "fluid_conn_id"
    default_conn_name = "fluid_default"
    conn_type = "fluid"
    hook_name = "Fluid"

    def __init__(self, fluid_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.fluid_conn_id = fluid_conn_id

    @cached_property
    def extras(self) -> dict[str, Any]:
        """The connection's extras (``{}`` when it has none)."""
        return self.get_connection(self.fluid_conn_id).extra_dejson

    @property
    def backend(self) -> str:
        """``kubernetes`` or ``local``. :raises FluidSpecError: any other value."""
        backend = str(self.extras.get("backend") or "kubernetes")
        if backend not in ("kubernetes", "local"):
            raise errors.FluidSpecError(
                f"fluid connection {self.fluid_conn_id!r}: backend {backend!r}; use 'kubernetes' or 'local'"
            )
        return backend

    def namespace(self, namespace: str | None = None) -> str:
        """``namespace`` if given, else the connection's, else ``default``."""
        return namespace or str(self.extras.get("namespace") or "default")

    @cached_property
    def client(self) -> Any:
        """The API client of the backend: :class:`~fluid_airflow.fluid.kube.KubernetesFluidClient`
        or :class:`~fluid_airflow.fluid.local.LocalFluidClient` (same methods)."""
        if self.backend == "local":
            from fluid_airflow.fluid.local import LocalFluidClient

            return LocalFluidClient(max_cache=str(self.extras.get("local_max_cache") or "2Gi"))
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        from fluid_airflow.fluid.kube import KubernetesFluidClient

        return KubernetesFluidClient(
            KubernetesHook(conn_id=None, kubernetes_conn_id=None, **self._kube_args())
        )

    def _kube_args(self) -> dict[str, Any]:
        extras = self.extras
        args: dict[str, Any] = {}
        if extras.get("kube_config"):
            inline = extras["kube_config"]
            if isinstance(inline, str):
                import yaml

                inline = yaml.safe_load(inline)  # JSON is YAML too
            args["config_dict"] = inline
        if extras.get("kube_config_path"):
            args["config_file"] = str(extras["kube_config_path"])
        if str(extras.get("in_cluster", "")).lower() in ("true", "1"):
            args["in_cluster"] = True
        if extras.get("cluster_context"):
            args["cluster_context"] = str(extras["cluster_context"])
        return args

    # -- create or adopt ----------------------------------------------------------------------
    def ensure(self, plural: str, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``manifest`` or adopt an existing object with the same spec, compared the way Fluid
        writes it back (:mod:`fluid_airflow.fluid.compare`: quantities by value, Fluid's defaults).

        :returns: ``(object, created)``.
        :raises FluidConflictError: an object of that name exists with a different spec, or is
            being deleted.
        """
        meta = manifest["metadata"]
        kind, where = manifest["kind"], f"{meta['namespace']}/{meta['name']}"
        existing = self.client.get(plural, meta["namespace"], meta["name"])
        if existing is None:
            try:
                return self.client.create(plural, manifest), True
            except errors.FluidConflictError:
                existing = self.client.get(plural, meta["namespace"], meta["name"])  # lost a race
                if existing is None:
                    raise
        if (existing.get("metadata") or {}).get("deletionTimestamp"):
            raise errors.FluidConflictError(
                f"{kind} {where} is being deleted; wait for the deletion to finish (or for the cleanup "
                "task), then re-run."
            )
        differing = spec_differences(existing, manifest)
        if differing:
            raise errors.FluidConflictError(
                f"{kind} {where} already exists with a different spec at {', '.join(differing)} (have "
                f"{json.dumps(existing.get('spec'))[:400]}, want {json.dumps(manifest['spec'])[:400]}). "
                "Delete it, or use another name."
            )
        self.log.info("Adopting existing %s %s (same spec)", kind, where)
        return existing, False

    # -- readiness ------------------------------------------------------------------------------
    def phases(self, namespace: str | None = None) -> list[dict[str, str]]:
        """Datasets and VineyardRuntimes of the namespace with their phases, for the UI page.

        Each entry: ``kind``, ``name``, ``namespace`` and ``phase`` (a Dataset's ``status.phase``;
        a VineyardRuntime's ``master/worker`` phases).
        """
        ns = self.namespace(namespace)
        out = []
        for obj in self.client.list(manifests.DATASET_PLURAL, ns):
            phase = str((obj.get("status") or {}).get("phase", ""))
            out.append({"kind": "Dataset", "name": obj["metadata"]["name"], "namespace": ns, "phase": phase})
        for obj in self.client.list(manifests.RUNTIME_PLURAL, ns):
            st = obj.get("status") or {}
            phase = f"master {st.get('masterPhase', '')}, workers {st.get('workerPhase', '')}"
            out.append(
                {"kind": "VineyardRuntime", "name": obj["metadata"]["name"], "namespace": ns, "phase": phase}
            )
        return out

    def readiness(
        self, namespace: str, name: str, transient_grace: float = status.TRANSIENT_GRACE
    ) -> status.Readiness:
        """Current :class:`~fluid_airflow.fluid.status.Readiness` of Dataset + VineyardRuntime.

        :param transient_grace: seconds a worker pod may stay in a transient state
            (:func:`~fluid_airflow.fluid.status.pod_problem`) before it counts as failed.
        """
        dataset = self.client.get(manifests.DATASET_PLURAL, namespace, name)
        runtime = self.client.get(manifests.RUNTIME_PLURAL, namespace, name)
        pods = self.client.list_pods(namespace, manifests.runtime_pods_selector(name))
        return status.evaluate(dataset, runtime, pods, grace=transient_grace)

    def worker_nodes(self, namespace: str, name: str) -> dict[str, str]:
        """Node name per vineyardd host of the VineyardRuntime ``namespace/name``.

        vineyardd reports the host ``MY_HOST_NAME``, which Fluid v1.0.8 sets to the worker pod's
        ``status.podIP`` (``charts/vineyard/templates/worker/statefulset.yaml``); the node is that
        pod's ``spec.nodeName``. Every IP of ``status.podIPs`` is mapped. Workers not yet scheduled
        or without an IP are left out.
        """
        nodes: dict[str, str] = {}
        for pod in self.client.list_pods(namespace, manifests.worker_selector(name)):
            node = (pod.get("spec") or {}).get("nodeName")
            st = pod.get("status") or {}
            ips = [st.get("podIP"), *((p or {}).get("ip") for p in st.get("podIPs") or [])]
            nodes.update({ip: node for ip in ips if ip and node})
        return nodes

    def rpc_endpoints(self, namespace: str, name: str) -> list[str]:
        """``host:port`` of every worker vineyardd of the VineyardRuntime ``namespace/name``, in worker order,
        as Fluid publishes them for clients (ConfigMap :func:`~fluid_airflow.fluid.manifests.rpc_conf_name`,
        key ``VINEYARD_RPC_ENDPOINT``; the Fluid fuse hands the same list to pods as ``RPCEndpoint``).

        Needs RBAC ``get`` on ``configmaps`` in ``namespace`` (deploy/rbac/role.yaml).

        :raises FluidSpecError: the local backend (its Datasets are reached by their socket), or the
            ConfigMap is missing or lists no endpoint.
        :raises FluidPermissionError: RBAC forbids reading the ConfigMap.
        """
        where = f"{namespace}/{manifests.rpc_conf_name(name)}"
        if self.backend == "local":
            socket = self.client.ipc_socket(namespace, name)
            raise errors.FluidSpecError(
                f"Dataset {namespace}/{name} runs on the local backend, which publishes no RPC endpoints: "
                f"set the vineyard connection's ipc_socket to {socket} instead."
            )
        found = self.client.get_config_map(namespace, manifests.rpc_conf_name(name))
        if found is None:
            raise errors.FluidSpecError(
                f"No ConfigMap {where}: Fluid publishes it when a VineyardRuntime is bound to Dataset "
                f"{namespace}/{name}. Check the Dataset's name and namespace (kubectl -n {namespace} get "
                "dataset,vineyardruntime), and bind a VineyardRuntime to it."
            )
        text = str((found.get("data") or {}).get(manifests.RPC_CONF_KEY) or "")
        endpoints = [e.strip() for e in text.split(",") if e.strip()]
        if not endpoints:
            raise errors.FluidSpecError(
                f"ConfigMap {where} lists no RPC endpoint under {manifests.RPC_CONF_KEY} (the runtime has no "
                f"workers?): check kubectl -n {namespace} get vineyardruntime {name}."
            )
        return endpoints

    def wait_ready(
        self,
        namespace: str,
        name: str,
        timeout: float,
        poll_interval: float = POLL_INTERVAL,
        transient_grace: float = status.TRANSIENT_GRACE,
    ) -> status.Readiness:
        """Poll :meth:`readiness` until ready.

        :param timeout: seconds.
        :param transient_grace: see :meth:`readiness`.
        :raises FluidRuntimeFailedError: a failed state was seen.
        :raises FluidTimeoutError: not ready after ``timeout`` seconds; names what is pending.
        """
        deadline = time.monotonic() + timeout
        while True:
            verdict = self.readiness(namespace, name, transient_grace)
            if verdict.ready:
                return verdict
            if verdict.failed:
                raise errors.FluidRuntimeFailedError(f"Dataset {namespace}/{name} failed: {verdict.message}")
            if time.monotonic() >= deadline:
                raise errors.FluidTimeoutError(
                    f"Dataset {namespace}/{name} not ready after {timeout:g} s: {verdict.message}"
                )
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))

    # -- cleanup --------------------------------------------------------------------------------
    def pods_using_claim(self, namespace: str, claim: str) -> list[dict[str, Any]]:
        """Pods of ``namespace`` that mount PVC ``claim`` (the Dataset's PVC has its name) and are not
        going: Fluid's rule for what blocks deleting a Dataset (fluid v1.0.8
        ``pkg/utils/kubeclient/volume.go`` ``ShouldDeleteDataset`` over ``GetPvcMountPods``; see
        :func:`is_going`)."""
        found = []
        for pod in self.client.list_pods(namespace):
            volumes = (pod.get("spec") or {}).get("volumes") or []
            mounts = any((v.get("persistentVolumeClaim") or {}).get("claimName") == claim for v in volumes)
            if mounts and not is_going(pod):
                found.append(pod)
        return found

    def cleanup(
        self,
        namespace: str,
        name: str,
        timeout: float,
        poll_interval: float = POLL_INTERVAL,
        run_labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Delete this DAG run's pods that mount the Dataset's PVC, wait (bounded) for the others,
        then delete the Dataset, then the runtime.

        That order is Fluid's: a Dataset is not finalised while a pod that is not going mounts its
        PVC (:meth:`pods_using_claim`), and deleting the runtime first leaves the Dataset NotBound
        but undeletable in some versions. A pod is deleted only when :func:`created_by_run` says this
        DAG run created it; pods of other runs or users are named in the log and waited for, never
        deleted. Each wait is bounded by ``timeout`` seconds.

        :param run_labels: KPO's ``dag_id`` and ``run_id`` pod labels of this DAG run
            (:func:`run_pod_labels`); None: delete no pod, only wait.
        :returns: ``{"pods": [...deleted pod names], "dataset": bool, "runtime": bool}`` (True =
            deleted now, False = was already gone).
        :raises FluidTimeoutError: naming what blocks deletion.
        """
        users = self.pods_using_claim(namespace, name)
        own = [p["metadata"]["name"] for p in users if created_by_run(p, name, run_labels)]
        for pod in own:
            self.client.delete_pod(namespace, pod)
        others = [_describe(p, name, run_labels) for p in users if p["metadata"]["name"] not in own]
        if others:
            self.log.warning(
                "Not deleting pods that mount PVC %s/%s, as this DAG run did not create them: %s. Waiting "
                "up to %g s for them to finish.", namespace, name, "; ".join(others), timeout,
            )  # fmt: skip
        self._wait_gone(
            lambda: [_describe(p, name, run_labels) for p in self.pods_using_claim(namespace, name)],
            f"pods mounting PVC {namespace}/{name}", timeout, poll_interval,
        )  # fmt: skip
        dataset = self.client.delete(manifests.DATASET_PLURAL, namespace, name)
        self._wait_gone(
            lambda: self._dataset_blockers(namespace, name, run_labels),
            f"Dataset {namespace}/{name}", timeout, poll_interval,
        )  # fmt: skip
        runtime = self.client.delete(manifests.RUNTIME_PLURAL, namespace, name)
        self._wait_gone(
            lambda: ["VineyardRuntime still present"]
            if self.client.get(manifests.RUNTIME_PLURAL, namespace, name)
            else [],
            f"VineyardRuntime {namespace}/{name}", timeout, poll_interval,
        )  # fmt: skip
        return {"pods": own, "dataset": dataset, "runtime": runtime}

    def _dataset_blockers(self, namespace: str, name: str, run_labels: dict[str, str] | None) -> list[str]:
        obj = self.client.get(manifests.DATASET_PLURAL, namespace, name)
        if obj is None:
            return []
        users = [_describe(p, name, run_labels) for p in self.pods_using_claim(namespace, name)]
        finalizers = (obj.get("metadata") or {}).get("finalizers") or []
        return users or [f"finalizers {finalizers}" if finalizers else "deletion pending"]

    @staticmethod
    def _wait_gone(blockers: Any, what: str, timeout: float, poll_interval: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = blockers()
            if not left:
                return
            if time.monotonic() >= deadline:
                raise errors.FluidTimeoutError(
                    f"{what} still not deleted after {timeout:g} s; blocked by: {'; '.join(left)}. "
                    "Wait for those to finish, or delete them by hand (kubectl delete) if nobody needs "
                    "them, and re-run the cleanup task."
                )
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's "Test" button: list Datasets in the connection's namespace."""
        try:
            if self.backend == "local":
                return True, "local backend: Datasets are local vineyardd processes"
            self.client.get(manifests.DATASET_PLURAL, self.namespace(), "fluid-airflow-connection-test")
        except Exception as exc:
            return False, str(exc)
        return True, f"Fluid CRDs reachable in namespace {self.namespace()}"


def is_going(pod: dict[str, Any]) -> bool:
    """Fluid's ``IsCompletePod`` (fluid v1.0.8 ``pkg/utils/kubeclient/pod.go``): a pod being deleted
    (``deletionTimestamp`` set, e.g. stuck Terminating on a lost node) or Succeeded/Failed no longer
    blocks a Dataset's deletion."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return True
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def run_pod_labels(context: Any) -> dict[str, str] | None:
    """KPO's ``dag_id`` and ``run_id`` labels of the task pods of this DAG run, made label-safe by
    KPO's own rule (cncf-kubernetes 10.25 ``operators/pod.py`` ``_get_ti_pod_labels``); None
    without a task context."""
    if not context or "ti" not in context:
        return None
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    ti_context = {"ti": context["ti"], "run_id": context["run_id"], "dag": context.get("dag")}
    labels = KubernetesPodOperator._get_ti_pod_labels(ti_context, include_try_number=False)  # type: ignore[arg-type]
    return {key: labels[key] for key in ("dag_id", "run_id")}


def created_by_run(pod: dict[str, Any], dataset: str, run_labels: dict[str, str] | None) -> bool:
    """Whether this DAG run created ``pod`` for ``dataset``: it carries our label
    ``fluid-airflow/dataset: <dataset>`` (set by FluidPodOperator) and the run's ``run_labels``."""
    from fluid_airflow.fluid.pods import DATASET_LABEL

    labels = (pod.get("metadata") or {}).get("labels") or {}
    if not run_labels or labels.get(DATASET_LABEL) != dataset:
        return False
    return all(labels.get(key) == value for key, value in run_labels.items())


def _describe(pod: dict[str, Any], dataset: str, run_labels: dict[str, str] | None) -> str:
    """``pod <name> (<phase>[, not created by this DAG run: <its labels>])``, for logs and errors."""
    phase = (pod.get("status") or {}).get("phase") or "?"
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if created_by_run(pod, dataset, run_labels):
        return f"pod {pod['metadata']['name']} ({phase})"
    owner = ", ".join(f"{k}={labels[k]}" for k in ("dag_id", "run_id") if k in labels) or "no DAG run labels"
    return f"pod {pod['metadata']['name']} ({phase}, not created by this DAG run: {owner})"
