"""An in-process Kubernetes API **test double** (not a cluster) for the fluid-airflow tests.

**What it still stands in for.** Every test of Kubernetes behaviour runs on the real control plane
(``tests/controlplane/``, fixture ``control_plane``: kube-apiserver, scheduler, kwok nodes, Fluid v1.0.8's own
controllers; ``tests/test_k8s_*.py``, ``tests/test_controlplane.py``). This double remains only for what that
plane cannot do:

1. **Running a container.** kwok runs none, so ``@task.fluid`` pods whose runner must really run (and reach a
   real vineyardd through the Dataset's mount) use this double with the kubelet double
   (``tests/kubelet_double.py``): ``tests/test_fluid_pods_e2e.py``.
2. **Answers the real plane gives only on failures it cannot be made to have on demand**: 5xx answers and
   retries, Fluid's CRDs missing, a Dataset in phase ``Failed`` (``tests/test_fluid_sensor.py``).

``tests/test_k8s_double.py`` pins the behaviour those tests rely on.

``KubeApiDouble`` serves the real Kubernetes REST API (JSON) on 127.0.0.1 for what this project uses, so the
real ``kubernetes`` client and cncf-kubernetes' ``KubernetesHook`` run unchanged against it: ``/version``,
``/api``, ``/apis``, and namespaced ``pods``, ``persistentvolumeclaims`` (core v1), ``datasets`` and
``vineyardruntimes`` (``data.fluid.io/v1alpha1``): list, create, get, replace, patch, delete, ``/status``.

As a real API server does: ``Status`` error bodies (``details.causes[].field`` for 422 Invalid; 404 "the
server could not find the requested resource" for an unknown or uninstalled resource type); server-set uid,
resourceVersion, creationTimestamp, generation, generateName; custom resources need the current
``metadata.resourceVersion`` to be replaced (stale: 409); main-resource writes keep the stored status and
``/status`` writes change only the status; JSON merge patch; finalizers and ``deletionTimestamp``; background
garbage collection through ``ownerReferences``; label selectors and simple field selectors; a bearer token.
Custom resources are pruned of unknown fields (``Warning`` header; ``fieldValidation=Strict``: 400),
defaulted and validated against the vendored Fluid CRD schemas in ``tests/crds``; core objects are validated
with ``kubernetes_validate``.

Differences, kept on purpose: one global resourceVersion; ``limit`` is ignored (one page); no watch, dryRun,
JSON patch, apply or deletecollection (400/415/405 rather than pretending); a strategic merge patch is applied
as a JSON merge patch (lists replaced, not merged by key); core objects are validated *strictly* (a real
server drops unknown fields with a warning) and not defaulted; no scheduler or kubelet: a pod stays
``Pending`` until a test sets its phase, and a deleted pod goes after ``pod_grace_seconds``; any namespace
is accepted; no ``pvc-protection``. Fluid's controllers are simulated in ``k8s_double_fluid.py`` (``.fluid``);
the stateless API semantics (resource types, Status errors, admission, merge patch, selectors) are in
``k8s_double_schema.py``.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes
import pytest
import yaml
from k8s_double_fluid import FluidSimulation
from k8s_double_schema import (
    CRD_DIR,
    FLUID_GROUP,
    RESOURCES,
    ApiError,
    Resource,
    admit,
    decode,
    discovery,
    field_selector,
    injected_error,
    label_selector,
    merge_patch,
    route,
    status_error,
)
from k8s_double_schema import NOT_FOUND as NOT_FOUND  # re-exported: test modules import it from here

TOKEN = "k8s-api-double-token"
SERVER_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")
MERGE_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json")


@dataclass
class RecordedRequest:
    """One request as received: ``body`` is the decoded JSON, ``status`` the HTTP code answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any = None
    content_type: str | None = None
    status: int = 0
    warnings: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    double: KubeApiDouble

    def _serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        code, body, extra = self.double.handle(self.command, self.path, self.headers, raw)
        data = json.dumps(body).encode()
        self.send_response(code)
        for name, value in [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *extra]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, *args) -> None:
        pass


class KubeApiDouble:
    """The Kubernetes API test double; ``start()``/``stop()``, or use it as a context manager.

    Knobs: ``inject(...)`` errors, ``set_pod_phase(...)``, ``pod_grace_seconds``, ``advance(seconds)`` of its
    clock, ``uninstall_fluid()``; the Fluid simulation's knobs are on ``.fluid``. Every request, injected
    and failed ones included, is appended to ``.requests`` (``RecordedRequest``).
    """

    def __init__(self, crd_dir: Path = CRD_DIR, token: str = TOKEN):
        self.token, self.crd_dir = token, crd_dir
        self.requests: list[RecordedRequest] = []
        self.pod_grace_seconds = 0.0
        self.fluid = FluidSimulation(self)
        self._lock = threading.RLock()
        self._objects: dict[str, dict[tuple[str, str], dict]] = {p: {} for p in RESOURCES}
        self._rv = self._mutations = 0
        self._offset = 0.0
        self._injections: list[list] = []  # [method, path regex, status, times left, message, reason]
        self._born: dict[str, float] = {}  # uid -> creation time on the double's clock
        self._due: dict[str, float] = {}  # uid -> when a pending pod deletion completes
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> KubeApiDouble:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"double": self}))
        self._server.daemon_threads = False  # server_close() then joins every request thread
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="k8s-api-double", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def __enter__(self) -> KubeApiDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return "http://{}:{}".format(*self._server.server_address[:2])

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """A kubeconfig whose current context is this double, a dummy bearer token and ``namespace``."""
        name, context = "k8s-api-double", {"cluster": "k8s-api-double", "user": "k8s-api-double"}
        config = {"apiVersion": "v1", "kind": "Config", "current-context": name}
        config["clusters"] = [{"name": name, "cluster": {"server": self.url}}]
        config["users"] = [{"name": name, "user": {"token": self.token}}]
        config["contexts"] = [{"name": name, "context": context | {"namespace": namespace}}]
        Path(path).write_text(yaml.safe_dump(config))
        return Path(path)

    # -- knobs ---------------------------------------------------------------------------------------------
    def inject(self, method: str, path_regex: str, status: int, times: int = 1, message=None, reason=None):
        """Fail the next ``times`` requests matching ``method`` ("*": any) and ``path_regex`` (searched in the
        URL path) with a Status error ``status``, worded by default as the API server would (403: RBAC's
        "cannot <verb> resource"; 409: AlreadyExists on create, else Conflict; 422 with a ``spec`` cause)."""
        with self._lock:
            self._injections.append([method.upper(), path_regex, status, times, message, reason])

    def set_pod_phase(self, name: str, phase: str, namespace: str = "default") -> None:
        """Stand in for the kubelet: set ``status.phase`` of a stored pod."""
        with self._lock:
            pod = copy.deepcopy(self._objects["pods"][(namespace, name)])
            pod["status"] = {**pod.get("status", {}), "phase": phase}
            self.save("pods", pod)

    def advance(self, seconds: float) -> None:
        """Move the double's clock forward (readiness delays, pod grace periods)."""
        with self._lock:
            self._offset += seconds

    def uninstall_fluid(self) -> None:
        """Delete the Fluid CRDs: their objects go and every data.fluid.io endpoint 404s."""
        with self._lock:
            self.fluid.installed = False
            for res in RESOURCES.values():
                if res.group == FLUID_GROUP:
                    self._objects[res.plural].clear()

    # -- store, also used by the Fluid simulation ----------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() + self._offset

    def timestamp(self) -> str:
        return (datetime.now(timezone.utc) + timedelta(seconds=self._offset)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def born(self, uid: str) -> float:
        return self._born.get(uid, self.now())

    def stored(self, plural: str, namespace: str | None = None) -> list[dict]:
        return [o for (ns, _), o in sorted(self._objects[plural].items()) if namespace in (None, ns)]

    def get_stored(self, plural: str, namespace: str, name: str) -> dict | None:
        return self._objects[plural].get((namespace, name))

    def save(self, plural: str, obj: dict) -> dict:
        """Store ``obj``: a new one gets server metadata, a changed one a new resourceVersion."""
        res, meta = RESOURCES[plural], obj["metadata"]
        old = self._objects[plural].get((meta["namespace"], meta["name"]))
        if old is None:
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=self.timestamp(), generation=1)
            obj.update(apiVersion=res.api_version, kind=res.kind)
            self._born[meta["uid"]] = self.now()
        elif old == obj:
            return old
        self._rv += 1
        self._mutations += 1
        meta["resourceVersion"] = str(self._rv)
        self._objects[plural][(meta["namespace"], meta["name"])] = obj
        return obj

    def delete(self, plural: str, obj: dict, grace: float | None = None) -> bool:
        """Begin deleting ``obj``; True when it is gone at once (no finalizers and no pod grace period)."""
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return False
        grace = (self.pod_grace_seconds if grace is None else grace) if plural == "pods" else 0
        if not meta.get("finalizers") and grace <= 0:
            self._drop(plural, obj)
            return True
        obj = copy.deepcopy(obj)
        obj["metadata"].update(deletionTimestamp=self.timestamp(), deletionGracePeriodSeconds=int(grace))
        self._due[meta["uid"]] = self.now() + grace
        self.save(plural, obj)
        return False

    def _drop(self, plural: str, obj: dict) -> None:
        meta = obj["metadata"]
        self._objects[plural].pop((meta["namespace"], meta["name"]), None)
        self._born.pop(meta["uid"], None)
        self._due.pop(meta["uid"], None)
        self._mutations += 1

    def _reconcile(self) -> None:
        """Simulated controllers, the kubelet's pod removal and the garbage collector, to a fixpoint."""
        for _ in range(20):
            before = self._mutations
            self.fluid.reconcile()
            alive = {o["metadata"]["uid"] for objs in self._objects.values() for o in objs.values()}
            for plural, objs in self._objects.items():
                for key, obj in list(objs.items()):
                    refs = obj["metadata"].get("ownerReferences")
                    if refs and not any(r.get("uid") in alive for r in refs) and self.delete(plural, obj):
                        continue
                    meta = objs[key]["metadata"]
                    due = self.now() >= self._due.get(meta["uid"], 0)
                    if meta.get("deletionTimestamp") and not meta.get("finalizers") and due:
                        self._drop(plural, objs[key])
            if self._mutations == before:
                return

    # -- HTTP ----------------------------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers, raw: bytes) -> tuple[int, dict, list]:
        """Answer one request: (status code, JSON body, extra headers)."""
        url = urlsplit(target)
        path, query = url.path.rstrip("/") or "/", {k: v[-1] for k, v in parse_qs(url.query).items()}
        record = RecordedRequest(method, path, query, None, headers.get("Content-Type"))
        extra = []
        with self._lock:
            self.requests.append(record)
            try:
                try:
                    record.body = json.loads(raw) if raw else None
                except ValueError as err:
                    raise ApiError(400, f"error decoding request body: {err}") from err
                if headers.get("Authorization") != f"Bearer {self.token}":
                    raise ApiError(401, "Unauthorized")
                code, body = self._dispatch(method, record.path, query, record)
            except ApiError as err:
                code, body = err.code, err.body()
                if code == 429:  # as the API server's max-in-flight filter does; urllib3 retries on it
                    extra.append(("Retry-After", "1"))
            record.status = code
            return code, body, extra + [("Warning", f'299 - "{w}"') for w in record.warnings]

    def _dispatch(self, method: str, path: str, query: dict, record: RecordedRequest) -> tuple[int, dict]:
        for inj in self._injections:
            wanted, pattern, status, times, message, reason = inj
            if times > 0 and wanted in ("*", method) and re.search(pattern, path):
                inj[3] -= 1
                raise injected_error(method, path, record.body, status, message, reason)
        if (info := discovery(path, self.fluid.installed)) is not None:
            return 200, info
        if "watch" in query or "dryRun" in query:
            raise ApiError(400, "watch and dryRun are not supported by the Kubernetes API test double")
        self._reconcile()
        res, ns, name, sub = route(path, self.fluid.installed)
        if name is None and method == "GET":
            return 200, self._list(res, ns, query)
        if name is None and method == "POST" and ns:
            return 201, self._create(res, ns, record.body, query, record.warnings)
        if name and method == "GET":
            return 200, copy.deepcopy(self._get(res, ns, name))
        if name and method == "PUT":
            return 200, self._replace(res, ns, name, sub, record.body, query, record.warnings)
        if name and method == "PATCH":
            body = self._patched(res, ns, name, record.body, record.content_type)
            return 200, self._replace(res, ns, name, sub, body, query, record.warnings, patch=True)
        if name and method == "DELETE" and not sub:
            return 200, self._delete(res, ns, name, record.body or {})
        raise ApiError(405, "the server does not allow this method on the requested resource")

    # -- verbs ---------------------------------------------------------------------------------------------
    def _get(self, res: Resource, ns: str, name: str) -> dict:
        obj = self._objects[res.plural].get((ns, name))
        if obj is None:
            raise status_error(404, res, name)
        return obj

    def _list(self, res: Resource, ns: str | None, query: dict) -> dict:
        labels = label_selector(query.get("labelSelector", ""))
        fields = field_selector(res, query.get("fieldSelector", ""))
        items = [copy.deepcopy(o) for o in self.stored(res.plural, ns) if labels(o) and fields(o)]
        for item in [] if res.group else items:  # core list items carry no kind/apiVersion
            del item["kind"], item["apiVersion"]
        meta = {"resourceVersion": str(self._rv)}
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta, "items": items}

    def _create(self, res: Resource, ns: str, body: Any, query: dict, warnings: list[str]) -> dict:
        obj = decode(res, body)
        meta = obj["metadata"]
        if meta.setdefault("namespace", ns) != ns:
            raise ApiError(
                400, "the namespace of the provided object does not match the namespace sent on the request"
            )
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        for key in (*SERVER_META, "resourceVersion"):
            meta.pop(key, None)
        obj.pop("status", None)
        if not res.group:
            obj["status"] = {"phase": "Pending"}
        admit(res, obj, self.crd_dir, query, warnings)
        if self.get_stored(res.plural, ns, meta["name"]) is not None:
            raise status_error(409, res, meta["name"], "create")
        return copy.deepcopy(self.save(res.plural, obj))

    def _patched(self, res: Resource, ns: str, name: str, patch: Any, content_type: str | None) -> dict:
        if (content_type or "").split(";")[0].strip() not in MERGE_PATCHES:
            raise ApiError(
                415, f"the Kubernetes API test double only accepts merge patches, not {content_type}"
            )
        if not isinstance(patch, dict):
            raise ApiError(400, "a merge patch must be a JSON object")
        return merge_patch(copy.deepcopy(self._get(res, ns, name)), patch)

    def _replace(self, res, ns, name, sub, body, query, warnings, patch=False) -> dict:
        old = self._get(res, ns, name)
        new = decode(res, body)
        meta = new["metadata"]
        if (meta.setdefault("name", name), meta.setdefault("namespace", ns)) != (name, ns):
            raise ApiError(400, f"the name or namespace of the object does not match the URL ({ns}/{name})")
        rv = meta.get("resourceVersion")
        if rv is None and res.group and not patch:
            text = "Invalid value: 0x0: must be specified for an update"
            cause = {"reason": "FieldValueInvalid", "message": text, "field": "metadata.resourceVersion"}
            raise status_error(422, res, name, causes=[cause])
        if rv is not None and rv != old["metadata"]["resourceVersion"]:
            raise status_error(409, res, name, "update")
        if sub == "status":  # only the status changes
            new = {**copy.deepcopy(old), "status": new.get("status")}
            new = {k: v for k, v in new.items() if v is not None}
        else:  # everything but the status and server-set metadata
            meta.update({k: old["metadata"][k] for k in SERVER_META if k in old["metadata"]})
            new = {k: v for k, v in new.items() if k != "status"}
            new |= {"status": old["status"]} if "status" in old else {}
            if {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
                k: v for k, v in old.items() if k not in ("metadata", "status")
            }:
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        admit(res, new, self.crd_dir, query, warnings)
        stored = self.save(res.plural, copy.deepcopy(new))
        if stored["metadata"].get("deletionTimestamp") and not stored["metadata"].get("finalizers"):
            self._drop(res.plural, stored)  # its last finalizer went: gone now
        return copy.deepcopy(stored)

    def _delete(self, res: Resource, ns: str, name: str, options: dict) -> dict:
        obj = self._get(res, ns, name)
        if not self.delete(res.plural, obj, options.get("gracePeriodSeconds")):
            return copy.deepcopy(self._get(res, ns, name))  # pending: the object, with its deletionTimestamp
        if not res.group:
            return copy.deepcopy(obj)  # pods and PVCs answer with the deleted object, custom resources not
        details = {"name": name, "group": res.group, "kind": res.plural, "uid": obj["metadata"]["uid"]}
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


@pytest.fixture
def kube_double():
    """A started ``KubeApiDouble`` (Fluid installed, nothing stored), stopped after the test."""
    with KubeApiDouble() as double:
        yield double


@pytest.fixture
def kube_double_config(kube_double, tmp_path) -> Path:
    """A kubeconfig file for ``kube_double`` (namespace ``default``)."""
    return kube_double.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kube_double_client(kube_double_config):
    """A real ``kubernetes.client.ApiClient`` for ``kube_double``, closed after the test."""
    api = kubernetes.config.new_client_from_config(config_file=str(kube_double_config))
    yield api
    api.close()


def connect_airflow(monkeypatch, kubeconfig: Path, conn_id: str, conn_type: str = "fluid") -> None:
    """Point Airflow connection ``conn_id`` (``fluid`` or ``kubernetes``) at the double, via an env var."""
    extra = {"kube_config_path": str(kubeconfig), "namespace": "default"}
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": conn_type, "extra": extra})
    )
