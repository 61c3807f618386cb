"""Simulated Fluid controllers for the Kubernetes API test double (``tests/k8s_double.py``).

Used only where the double is (its docstring says where): binding the Dataset the ``@task.fluid`` pods of
``tests/test_fluid_pods_e2e.py`` mount, and ``fail_runtime`` / ``ready_after`` for the sensor's failure
tests. Fluid's real controllers run in ``tests/controlplane/`` for everything else.

Nothing here runs Fluid. It imitates, through the double's object store, what Fluid's dataset controller and
vineyardruntime controller write, as ``docs/design.md`` describes it (§16 status, §17 what a
VineyardRuntime deploys, §19 the ``fluid.io/s-…`` label rule, §20 deletion) and as Fluid master's
``pkg/ddc/vineyard/{dataset,health_check}.go`` and ``pkg/controllers/runtime_controller.go`` read. It runs
lazily before every request, from the time elapsed since the runtime was created: no background threads.

- Dataset: finalizer ``fluid-dataset-controller-finalizer`` and status ``{phase: NotBound, conditions: []}``
  (§2.1). A deleted Dataset stays (with its ``deletionTimestamp``) while a pod of its namespace that is not
  Succeeded/Failed nor being deleted mounts PVC ``<name>``, or ``status.datasetRef`` is not empty (§7).
- VineyardRuntime with a same-named Dataset (§2.2): finalizer ``vineyard-runtime-controller-finalizer`` and an
  ownerReference to the Dataset (so the double garbage-collects it after its Dataset); pods
  ``<name>-master-<i>``, ``<name>-worker-<i>`` labelled ``app: vineyard``, ``role: vineyard-master|worker``,
  ``release: <name>`` (§3); a status with every field the CRD requires. ``ready_after`` seconds after the
  runtime's creation the master is ready and ``workers_ready`` workers (default: ``spec.replicas``) run; the
  Dataset is then ``Bound`` (master ready and ≥ 1 worker ready, as ``health_check.go`` decides: Bound with
  fewer ready workers than desired is possible), condition ``Ready/True/DatasetReady`` "The ddc runtime is
  ready.", ``status.runtimes``; PVC ``<name>`` is created with labels ``fluid.io/s-<ns>-<name>: "true"``
  (``fluid.io/s-<dataset uid>`` when that key is ≥ 63 characters, §5.1) and ``fluid.io/dataset-id:
  <ns>-<name>``. A Bound Dataset that loses its last ready worker goes ``Failed``.
- ``fail_runtime(name)``: Dataset ``Failed`` ("The ddc runtime is not ready."), runtime workers ``NotReady``
  with the given message, worker pods ``Pending``.
- Runtime deletion (§7): waits while the PVC is in use as above; then the PVC and the runtime's pods go, and
  the Dataset, if any, is set back to ``NotBound`` with empty conditions and runtimes.

Not simulated: events, nodes and node labels, the fuse DaemonSet, ConfigMaps, StatefulSets, Helm,
DataProcess/DataLoad, the webhook.
"""

from __future__ import annotations

import copy
from typing import Any

DATASET_FINALIZER = "fluid-dataset-controller-finalizer"
RUNTIME_FINALIZER = "vineyard-runtime-controller-finalizer"
API_VERSION = "data.fluid.io/v1alpha1"
IMAGE = "registry.aliyuncs.com/vineyard/vineyardd:v0.22.2"


def common_label(namespace: str, name: str, uid: str) -> str:
    """The node/PVC label key Fluid uses for a dataset (notes §5.1)."""
    key = f"fluid.io/s-{namespace}-{name}"
    return f"fluid.io/s-{uid}" if len(key) >= 63 else key


def _condition(conditions: list | None, new: dict, stamp: str, time_keys: tuple[str, str]) -> list:
    """Replace the condition of ``new['type']``; timestamps change only when the condition does."""
    conditions = [c for c in conditions or []]
    old = next((c for c in conditions if c.get("type") == new["type"]), None)
    if old and all(old.get(k) == v for k, v in new.items()):
        return conditions
    return [c for c in conditions if c is not old] + [{**new, **dict.fromkeys(time_keys, stamp)}]


def worker_ip(index: int) -> str:
    """The pod IP of vineyard worker ``index`` (on node ``double-node-<index>``)."""
    return f"10.0.0.{index + 1}"


class FluidSimulation:
    """The Fluid control-plane simulation behind a ``KubeApiDouble`` (``double.fluid``).

    Knobs: ``ready_after`` (seconds from a runtime's creation to readiness, default 0); ``workers_ready``
    (None: all replicas; else how many workers get ready); ``paused`` (the controllers do nothing, as when
    scaled to 0); ``fail_runtime(name, namespace, message)``. ``double.uninstall_fluid()`` unsets
    ``installed``.
    """

    def __init__(self, double: Any):
        self.double = double
        self.ready_after = 0.0
        self.workers_ready: int | None = None
        self.paused = False
        self.installed = True
        self._failed: dict[tuple[str, str], str] = {}

    def fail_runtime(
        self, name: str, namespace: str = "default", message: str = "vineyardd workers crashed"
    ) -> None:
        """From now on, the runtime's health check fails (notes §2.1 ``Failed``)."""
        self._failed[(namespace, name)] = message

    def pvc_in_use(self, namespace: str, claim: str) -> bool:
        """Whether a pod that is not Succeeded/Failed nor being deleted mounts the PVC (notes §7)."""
        for pod in self.double.stored("pods", namespace):
            if pod["metadata"].get("deletionTimestamp") or pod.get("status", {}).get("phase") in (
                "Succeeded",
                "Failed",
            ):
                continue
            volumes = pod.get("spec", {}).get("volumes") or []
            if any((v.get("persistentVolumeClaim") or {}).get("claimName") == claim for v in volumes):
                return True
        return False

    def reconcile(self) -> None:
        if self.paused or not self.installed:
            return
        for dataset in self.double.stored("datasets"):
            self._dataset(copy.deepcopy(dataset))
        for runtime in self.double.stored("vineyardruntimes"):
            self._runtime(copy.deepcopy(runtime))

    def _dataset(self, ds: dict) -> None:
        meta = ds["metadata"]
        finalizers = meta.setdefault("finalizers", [])
        if meta.get("deletionTimestamp"):
            busy = self.pvc_in_use(meta["namespace"], meta["name"]) or ds.get("status", {}).get("datasetRef")
            if DATASET_FINALIZER in finalizers and not busy:
                finalizers.remove(DATASET_FINALIZER)
                self.double.save("datasets", ds)
            return
        if DATASET_FINALIZER not in finalizers:
            finalizers.append(DATASET_FINALIZER)
        status = ds.setdefault("status", {})
        if not status.get("phase"):
            status.update(phase="NotBound", conditions=status.get("conditions") or [])
        self.double.save("datasets", ds)

    def _runtime(self, rt: dict) -> None:
        d, meta = self.double, rt["metadata"]
        ns, name = meta["namespace"], meta["name"]
        ds = d.get_stored("datasets", ns, name)
        finalizers = meta.setdefault("finalizers", [])
        if meta.get("deletionTimestamp"):
            if RUNTIME_FINALIZER in finalizers and not self.pvc_in_use(ns, name):
                self._tear_down(ns, name, ds)
                finalizers.remove(RUNTIME_FINALIZER)
                d.save("vineyardruntimes", rt)
            return
        if ds is None or ds["metadata"].get("deletionTimestamp"):
            return  # "No dataset can be bound to the runtime, waiting."
        owner = {"apiVersion": API_VERSION, "kind": "Dataset", "name": name, "uid": ds["metadata"]["uid"]}
        if owner not in meta.setdefault("ownerReferences", []):
            meta["ownerReferences"].append(owner)
        if RUNTIME_FINALIZER not in finalizers:
            finalizers.append(RUNTIME_FINALIZER)
        spec = rt.get("spec", {})
        replicas = spec.get("replicas") or spec.get("worker", {}).get("replicas") or 0
        masters = spec.get("master", {}).get("replicas") or 1
        failure = self._failed.get((ns, name))
        ready = d.now() >= d.born(meta["uid"]) + self.ready_after
        wanted = replicas if self.workers_ready is None else self.workers_ready
        workers = 0 if failure or not ready else max(0, min(replicas, wanted))
        rt["status"] = self._runtime_status(
            rt.get("status") or {}, ns, name, replicas, masters, ready, workers, failure
        )
        d.save("vineyardruntimes", rt)
        self._pods(ns, name, masters, ready, replicas, workers)
        bound = ready and not failure and (workers > 0 or replicas == 0)
        if failure or (not bound and ds.get("status", {}).get("phase") == "Bound"):
            self._dataset_phase(ds, "Failed", masters)
        elif bound:
            self._dataset_phase(ds, "Bound", masters)
            if d.get_stored("persistentvolumeclaims", ns, name) is None:
                d.save("persistentvolumeclaims", self._pvc(ds))

    def _runtime_status(self, old, ns, name, replicas, masters, ready, workers, failure) -> dict:
        stamp, keys = self.double.timestamp(), ("lastProbeTime", "lastTransitionTime")
        worker_msg = failure or (
            "The workers are ready"
            if workers or not replicas
            else f"The statefulset {name}-worker in {ns} are not ready, the Unavailable number is "
            f"{replicas - workers}, please fix it."
        )
        conditions = old.get("conditions")
        for kind, ok, reason, message in [
            ("MasterInitialized", True, "The master is initialized.", "The master is initialized."),
            (
                "MasterReady",
                ready,
                "The master is ready.",
                "The master is ready." if ready else "The master is not ready.",
            ),
            ("WorkersInitialized", True, "The workers are initialized.", "The workers are initialized."),
            ("WorkersReady", bool(workers or (ready and not replicas)), "The workers are ready.", worker_msg),
            (
                "FusesReady",
                ready,
                "The fuses are ready.",
                "The fuses are ready." if ready else "The fuses are not ready.",
            ),
        ]:
            new = {"type": kind, "status": str(ok), "reason": reason, "message": message}
            conditions = _condition(conditions, new, stamp, keys)
        worker_phase = "Ready" if ready and workers >= replicas else "PartialReady" if workers else "NotReady"
        return {
            **old,
            "masterPhase": "Ready" if ready else "NotReady",
            "workerPhase": worker_phase,
            "fusePhase": "Ready" if ready else "NotReady",
            "desiredMasterNumberScheduled": masters,
            "currentMasterNumberScheduled": masters,
            "masterNumberReady": masters if ready else 0,
            "desiredWorkerNumberScheduled": replicas,
            "currentWorkerNumberScheduled": replicas,
            "workerNumberReady": workers,
            "workerNumberAvailable": workers,
            "workerNumberUnavailable": replicas - workers,
            "desiredFuseNumberScheduled": 0,
            "currentFuseNumberScheduled": 0,
            "fuseNumberReady": 0,
            "valueFile": f"{name}-vineyard-values",
            "selector": f"app=vineyard,release={name},role=vineyard-worker",
            "conditions": conditions,
            **({"workerReason": failure} if failure else {}),
        }

    def _dataset_phase(self, ds: dict, phase: str, masters: int) -> None:
        ds, ns, name = copy.deepcopy(ds), ds["metadata"]["namespace"], ds["metadata"]["name"]
        status = ds.setdefault("status", {})
        if phase == "Bound":
            if not status.get("mounts") and ds.get("spec", {}).get("mounts"):
                status["mounts"] = ds["spec"]["mounts"]
            ref = {
                "name": name,
                "namespace": ns,
                "category": "Accelerate",
                "type": "vineyard",
                "masterReplicas": masters,
            }
            status["runtimes"] = [r for r in status.get("runtimes") or [] if r != ref] + [ref]
        ok = phase == "Bound"
        new = {"type": "Ready", "status": str(ok), "reason": "DatasetReady",
               "message": f"The ddc runtime is {'ready' if ok else 'not ready'}."}  # fmt: skip
        stamp = self.double.timestamp()
        status["conditions"] = _condition(
            status.get("conditions"), new, stamp, ("lastUpdateTime", "lastTransitionTime")
        )
        status["phase"] = phase
        self.double.save("datasets", ds)

    def _pods(self, ns: str, name: str, masters: int, ready: bool, replicas: int, workers: int) -> None:
        want = {f"{name}-master-{i}": ("vineyard-master", ready, i) for i in range(masters)}
        want |= {f"{name}-worker-{i}": ("vineyard-worker", i < workers, i) for i in range(replicas)}
        for pod in self.double.stored("pods", ns):
            labels = pod["metadata"].get("labels") or {}
            if (
                labels.get("release") == name
                and labels.get("app") == "vineyard"
                and pod["metadata"]["name"] not in want
            ):
                self.double.delete("pods", pod, 0)  # scaled in
        for pod_name, (role, running, i) in want.items():
            pod = copy.deepcopy(self.double.get_stored("pods", ns, pod_name)) or {
                "metadata": {"name": pod_name, "namespace": ns, "labels": {
                    "app": "vineyard", "role": role, "release": name, "fluid.io/dataset": f"{ns}-{name}",
                    "fluid.io/dataset-id": f"{ns}-{name}", "fluid.io/managed-by": "fluid",
                    "app.kubernetes.io/name": "vineyard", "app.kubernetes.io/instance": name}},
                "spec": {"containers": [{"name": role.split("-")[1], "image": IMAGE}], "hostNetwork": True,
                         "nodeName": f"double-node-{i}"}}  # fmt: skip
            if pod["metadata"].get("deletionTimestamp"):
                continue
            condition = {"type": "Ready", "status": str(running)}
            pod["status"] = {"phase": "Running" if running else "Pending", "conditions": [condition]}
            if running:  # hostNetwork: the pod IP is its node's, what Fluid gives vineyardd as MY_HOST_NAME
                ip = worker_ip(i) if role == "vineyard-worker" else f"10.0.1.{i + 1}"
                pod["status"] |= {"hostIP": ip, "podIP": ip, "podIPs": [{"ip": ip}]}
            self.double.save("pods", pod)

    def _pvc(self, ds: dict) -> dict:
        meta = ds["metadata"]
        ns, name = meta["namespace"], meta["name"]
        modes = ds.get("spec", {}).get("accessModes") or ["ReadOnlyMany"]
        labels = {common_label(ns, name, meta["uid"]): "true", "fluid.io/dataset-id": f"{ns}-{name}"}
        return {
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": "100Pi"}},
                     "storageClassName": "fluid", "volumeName": f"{ns}-{name}", "volumeMode": "Filesystem"},
            "status": {"phase": "Bound", "accessModes": modes, "capacity": {"storage": "100Pi"}},
        }  # fmt: skip

    def _tear_down(self, ns: str, name: str, ds: dict | None) -> None:
        """Runtime deletion (``ReconcileRuntimeDeletion``): volume, Helm release, then the Dataset unbound."""
        d = self.double
        if (pvc := d.get_stored("persistentvolumeclaims", ns, name)) is not None:
            d.delete("persistentvolumeclaims", pvc)
        for pod in d.stored("pods", ns):
            labels = pod["metadata"].get("labels") or {}
            if labels.get("release") == name and labels.get("app") == "vineyard":
                d.delete("pods", pod, 0)
        if ds is not None:
            ds = copy.deepcopy(ds)
            status = ds.setdefault("status", {})
            status.update(
                phase="NotBound", conditions=[], runtimes=[], cacheStates={}, ufsTotal="", fileNum=""
            )
            status.pop("hcfs", None)
            d.save("datasets", ds)
