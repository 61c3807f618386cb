"""A kubelet **test double**: runs task pods made through the Kubernetes API test double as local processes.

Neither a kubelet nor a container runtime: the kubelet of one node, so KPO pods of ``KubeApiDouble`` run.
It stands in for the one thing the real control plane (``tests/controlplane/``, where kwok plays every
kubelet) cannot do: run a task pod's container, here the ``@task.fluid`` runner against a real vineyardd
(``tests/test_fluid_pods_e2e.py``).

- It polls the pods of a namespace through the real kubernetes client (the API double has no watch); it runs
  *task pods*, those with a container named ``base`` (KPO's), not the simulated Vineyard pods.
- The base container's ``command + args`` run as a local subprocess; a leading ``python`` becomes
  ``sys.executable`` (this venv stands in for an image with fluid-airflow; the image is ignored). The process
  gets the container's plain ``env`` values plus ``PATH`` and ``HOME=<pod dir>``, not the test's environment.
- **Path mapping.** Each volume mounted into the base container is a local directory, and every env value
  and argument naming a path under a mount path is rewritten to it:
  - a PVC whose claim is in ``claims`` → that directory. For a Dataset's PVC (at ``/var/run/vineyard``) the
    test puts there a ``vineyard-config.yaml`` whose ``IPCSocket`` is the absolute path of a real local
    vineyardd: what Fluid's fuse writes on a node running a VineyardRuntime worker (docs/design.md §18). So
    ``VINEYARD_CONFIG=/var/run/vineyard/vineyard-config.yaml`` becomes ``<claim dir>/vineyard-config.yaml``.
    A pod mounting another claim stays ``Pending``.
  - an emptyDir → ``<work_dir>/<pod>/<volume>``; so for KPO's XCom volume the runner's ``--output
    /airflow/xcom/return.json`` becomes ``<work_dir>/<pod>/xcom/return.json``.
- Status goes through the API's ``pods/<name>/status`` as a kubelet writes it: ``Running``, all containers
  running; when the process exits, ``base`` is terminated with its exit code; other containers (KPO's XCom
  sidecar) run until :meth:`exec_stop` (KPO's sidecar-kill exec); then ``Succeeded`` (all 0) or ``Failed``.
- :meth:`exec_cat` prints a file of a pod; ``outputs`` keeps each ``/airflow/xcom/return.json``. A pod deleted
  while its process runs: the process is killed at once (no grace period), and listed in ``killed``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import kubernetes


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Run:
    pod: dict
    mounts: dict[str, Path]  # container mount path -> local directory
    proc: subprocess.Popen
    started: str = field(default_factory=_now)
    finished: dict[str, tuple[int, str]] = field(default_factory=dict)  # container -> (exit code, when)


class KubeletDouble:
    """Runs the task pods of ``namespace`` (API double at ``kubeconfig``); ``start()``/``stop()`` or ``with``.

    ``claims``: PVC claim name -> local directory; ``work_dir``: per-pod dirs (emptyDirs, ``base.log``).
    """

    def __init__(self, kubeconfig: Path, claims: dict[str, Path], work_dir: Path, namespace: str = "default"):
        self.api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(kubeconfig)))
        self.claims, self.work_dir, self.namespace = claims, Path(work_dir), namespace
        self.runs: dict[str, _Run] = {}
        self.outputs: dict[str, str | None] = {}
        self.killed: list[str] = []
        self.errors: list[Exception] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubelet-double", daemon=True)

    def start(self) -> KubeletDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and kill every process still running; then raise the first error of the loop."""
        self._stop.set()
        self._thread.join()
        for run in self.runs.values():
            if run.proc.poll() is None:
                run.proc.kill()
            run.proc.wait()
        self.api.api_client.close()
        if self.errors:
            raise self.errors[0]

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what exec into a pod would do ---------------------------------------------------------------------
    def exec_cat(self, pod: str, path: str) -> str | None:
        """The text of ``path`` inside pod ``pod``, None when missing (or the pod is not ours)."""
        run = self.runs.get(pod)
        local = run and self._local(run.mounts, path)
        return Path(local).read_text() if local and Path(local).is_file() else None

    def exec_stop(self, pod: str, container: str) -> None:
        """End container ``container`` of pod ``pod`` (exit code 0), e.g. KPO's XCom sidecar."""
        with self._lock:
            run = self.runs[pod]
            run.finished.setdefault(container, (0, _now()))
            self._write_status(run)

    def logs(self, pod: str) -> str:
        return (self.work_dir / pod / "base.log").read_text() if pod in self.runs else ""

    # -- the loop ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                listed = self.api.list_namespaced_pod(self.namespace, _preload_content=False)
                pods = {p["metadata"]["name"]: p for p in json.loads(listed.data)["items"]}
            except Exception:
                continue  # the API double is stopping or failing on purpose; try again
            with self._lock:
                try:
                    self._sync(pods)
                except Exception as exc:  # reported by stop(): a test must not wait on a dead kubelet
                    self.errors.append(exc)

    def _sync(self, pods: dict[str, dict]) -> None:
        for name, pod in pods.items():
            if name not in self.runs and not pod["metadata"].get("deletionTimestamp"):
                self._maybe_start(pod)
        for name, run in self.runs.items():
            deleted = name not in pods or pods[name]["metadata"].get("deletionTimestamp")
            if deleted and run.proc.poll() is None:
                run.proc.kill()
                self.killed.append(name)
            if (code := run.proc.poll()) is not None and "base" not in run.finished:
                run.finished["base"] = (code, _now())
                output = Path(self._local(run.mounts, "/airflow/xcom/return.json"))
                self.outputs[name] = output.read_text() if output.is_file() else None
                if not deleted:
                    self._write_status(run)

    def _maybe_start(self, pod: dict) -> None:
        spec, name = pod["spec"], pod["metadata"]["name"]
        base = next((c for c in spec["containers"] if c["name"] == "base"), None)
        if base is None or pod.get("status", {}).get("phase", "Pending") != "Pending":
            return
        directory = self.work_dir / name
        directory.mkdir(parents=True)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {}
        for mount in base.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in self.claims:
                    return  # not attachable on this node: the pod stays Pending
                mounts[mount["mountPath"]] = Path(self.claims[claim])
            else:  # emptyDir (and anything else): a fresh per-pod directory
                mounts[mount["mountPath"]] = directory / mount["name"]
        for local in mounts.values():
            local.mkdir(parents=True, exist_ok=True)
        argv = [self._local(mounts, a) for a in [*base.get("command", []), *base.get("args", [])]]
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(directory)}
        env |= {e["name"]: self._local(mounts, e["value"]) for e in base.get("env", []) if "value" in e}
        with open(directory / "base.log", "wb") as log:
            proc = subprocess.Popen(argv, env=env, cwd=directory, stdout=log, stderr=subprocess.STDOUT)
        self.runs[name] = run = _Run(pod, mounts, proc)
        self._write_status(run)

    @staticmethod
    def _local(mounts: dict[str, Path], value: str) -> str:
        for mount_path, local in mounts.items():
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(local) + value[len(mount_path.rstrip("/")) :]
        return value

    def _write_status(self, run: _Run) -> None:
        statuses = []
        for container in run.pod["spec"]["containers"]:
            name = container["name"]
            if name in run.finished:
                code, when = run.finished[name]
                state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                        "startedAt": run.started, "finishedAt": when}}  # fmt: skip
            else:
                state = {"running": {"startedAt": run.started}}
            statuses.append({"name": name, "image": container.get("image", ""), "imageID": "",
                             "ready": "running" in state, "restartCount": 0, "state": state})  # fmt: skip
        codes = [code for code, _ in run.finished.values()]
        done = len(codes) == len(statuses)
        phase = ("Succeeded" if not any(codes) else "Failed") if done else "Running"
        status = {"phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": run.started,
                  "conditions": [{"type": "PodScheduled", "status": "True"}],
                  "containerStatuses": statuses}  # fmt: skip
        try:
            name, merge = run.pod["metadata"]["name"], "application/merge-patch+json"
            self.api.patch_namespaced_pod_status(
                name, self.namespace, {"status": status}, _content_type=merge
            )
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:  # a pod deleted meanwhile has no status to write
                raise
