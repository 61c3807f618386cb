"""The local backend: Fluid's objects stood in for by files and one local vineyardd each.

With a ``fluid`` connection whose ``backend`` is ``local``, the same operators run without
Kubernetes: a Dataset is a JSON file, binding a VineyardRuntime starts a local vineyardd for
that (namespace, Dataset) sized by the runtime's cache capacity (capped by ``local_max_cache``:
a runtime sized for cluster nodes rarely fits a laptop; the cap is logged), and deleting the
runtime stops it. Objects are returned in the same dict shapes as the Kubernetes API, with the
status Fluid would report (docs/design.md §16), so readiness and cleanup code is shared.
Pods do not exist locally: listing them returns nothing.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fluid_airflow import exceptions as errors
from fluid_airflow.fluid.manifests import DATASET_PLURAL, RUNTIME_PLURAL, parse_quantity

log = logging.getLogger(__name__)


class LocalFluidClient:
    """Same methods as :class:`~fluid_airflow.fluid.kube.KubernetesFluidClient`, on this machine.

    :param max_cache: quantity capping each local vineyardd's shared memory (e.g. ``2Gi``).
    :param root: folder of the local objects; default ``<[fluid] runtime_dir>/fluid``.
    """

    backend = "local"

    def __init__(self, max_cache: str = "2Gi", root: str | Path | None = None) -> None:
        from fluid_airflow import config

        self.max_cache = parse_quantity(max_cache, "fluid connection local_max_cache")
        self.root = Path(root) if root else config.runtime_dir() / "fluid"

    def folder(self, namespace: str, name: str) -> Path:
        """Folder of one Dataset: short and fixed-length, since it holds a UNIX socket."""
        digest = hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()[:12]
        return self.root / f"ds-{digest}"

    def daemon(self, namespace: str, name: str) -> Any:
        """The :class:`~fluid_airflow.vineyard.local.daemon.LocalVineyardd` standing in for the runtime."""
        from fluid_airflow.vineyard.local.daemon import LocalVineyardd

        return LocalVineyardd(self.folder(namespace, name))

    def ipc_socket(self, namespace: str, name: str) -> str:
        """IPC socket of the Dataset's local vineyardd (exists once the runtime is bound)."""
        return str(self.daemon(namespace, name).socket_path)

    def _file(self, plural: str, namespace: str, name: str) -> Path:
        return self.folder(namespace, name) / f"{plural}.json"

    def _read(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        path = self._file(plural, namespace, name)
        return json.loads(path.read_text()) if path.exists() else None

    # -- Fluid custom resources ----------------------------------------------------------------
    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object with its current status, or None."""
        obj = self._read(plural, namespace, name)
        if obj is None:
            return None
        running = self.daemon(namespace, name).status().running
        runtime = self._read(RUNTIME_PLURAL, namespace, name)
        if plural == DATASET_PLURAL:
            bound = running and runtime is not None
            # A recorded runtime whose vineyardd is gone lost every object: Failed, not pending.
            phase = "Bound" if bound else ("Failed" if runtime is not None else "NotBound")
            obj["status"] = {
                "phase": phase,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if bound else "False",
                        "reason": "DatasetReady" if bound else "DatasetNotReady",
                        "message": "local vineyardd answers"
                        if bound
                        else (
                            "local vineyardd is not running (its objects are lost): run the cleanup "
                            "task (FluidCleanupOperator), then bind again"
                            if runtime
                            else "no VineyardRuntime bound"
                        ),
                    }
                ],
            }
            if bound:
                obj["status"]["runtimes"] = [{"name": name, "namespace": namespace, "type": "vineyard"}]
        else:
            replicas = int(obj["spec"].get("replicas", 1))
            phase = "Ready" if running else "NotReady"
            obj["status"] = {
                "masterPhase": phase,
                "workerPhase": phase,
                "fusePhase": phase,
                "desiredWorkerNumberScheduled": replicas,
                "workerNumberReady": replicas if running else 0,
                "conditions": [
                    {
                        "type": "WorkersReady",
                        "status": "True" if running else "False",
                        "message": f"one local vineyardd stands in for {replicas} worker(s)",
                    }
                ],
            }
        return obj

    def list(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        """Every recorded object of ``plural`` in ``namespace``, with its current status."""
        found = []
        for path in sorted(self.root.glob(f"ds-*/{plural}.json")):
            meta = json.loads(path.read_text()).get("metadata", {})
            if meta.get("namespace") == namespace:
                obj = self.get(plural, namespace, meta["name"])
                if obj is not None:
                    found.append(obj)
        return found

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        """Record the object; a VineyardRuntime also starts its local vineyardd.

        :raises FluidConflictError: it exists already (the API's 409).
        :raises VineyardDaemonError: vineyardd cannot start (e.g. not enough memory).
        """
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        path = self._file(plural, namespace, name)
        if path.exists():
            raise errors.FluidConflictError(
                f"{body['kind']} {namespace}/{name} already exists (local backend)"
            )
        obj = json.loads(json.dumps(body))
        obj["metadata"].update(
            uid=str(uuid.uuid4()), creationTimestamp=datetime.now(timezone.utc).isoformat()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        if plural == RUNTIME_PLURAL:
            self._start(obj)
        path.write_text(json.dumps(obj))
        return self.get(plural, namespace, name) or obj

    def _start(self, runtime: dict[str, Any]) -> None:
        meta = runtime["metadata"]
        levels = runtime["spec"].get("tieredstore", {}).get("levels", [])
        quota = next((lv.get("quota") for lv in levels if lv.get("mediumtype") == "MEM"), None) or "4Gi"
        wanted = parse_quantity(quota, f"VineyardRuntime {meta['namespace']}/{meta['name']} MEM quota")
        size = min(wanted, self.max_cache)
        if size < wanted:
            log.warning(
                "VineyardRuntime %s/%s asks for %s of cache; the local vineyardd gets %d bytes "
                "(fluid connection local_max_cache).", meta["namespace"], meta["name"], quota, size,
            )  # fmt: skip
        self.daemon(meta["namespace"], meta["name"]).start(str(size))
        from fluid_airflow.runner import warm

        # The Dataset's warm runner for @task.fluid (stopped by delete, before vineyardd).
        folder = self.folder(meta["namespace"], meta["name"])
        warm.start(folder, self.ipc_socket(meta["namespace"], meta["name"]))
        if not warm.wait_ready(folder, timeout=120):
            log.warning(
                "The warm runner of Dataset %s/%s did not answer within 120 s (see %s): its @task.fluid "
                "tasks fork their own task process instead, a second slower each.",
                meta["namespace"], meta["name"], folder / warm.LOG_NAME,
            )  # fmt: skip

    def delete(self, plural: str, namespace: str, name: str) -> bool:
        """Remove the object (a runtime's vineyardd is stopped: its objects are gone).

        :returns: False when it did not exist.
        """
        path = self._file(plural, namespace, name)
        if not path.exists():
            return False
        if plural == RUNTIME_PLURAL:
            from fluid_airflow.hooks.vineyard import close_clients
            from fluid_airflow.runner import warm

            warm.stop(self.folder(namespace, name))  # its task children hold vineyardd clients
            close_clients(self.ipc_socket(namespace, name))  # else vineyardd ignores SIGTERM
            self.daemon(namespace, name).stop()
        path.unlink()
        folder = self.folder(namespace, name)
        if not any((folder / f"{kind}.json").exists() for kind in (DATASET_PLURAL, RUNTIME_PLURAL)):
            shutil.rmtree(folder, ignore_errors=True)  # pid, state and log files of the stopped vineyardd
        return True

    # -- core objects: none locally -------------------------------------------------------------
    # builtins.list: in this class body `list` is the method list() above
    def list_pods(self, namespace: str, label_selector: str = "") -> builtins.list[dict[str, Any]]:
        """No pods on the local backend."""
        return []

    def delete_pod(self, namespace: str, name: str) -> bool:
        """No pods on the local backend: always False."""
        return False

    def get_pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        """No PVCs on the local backend."""
        return None
