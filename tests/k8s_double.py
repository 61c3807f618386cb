"""An in-process Kubernetes API **test double** (not a cluster) for the fluid-airflow tests.

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
is accepted; no ``pvc-protection``. Fluid's controllers are simulated in ``k8s_double_fluid.py`` (``.fluid``).
"""

from __future__ import annotations

import copy
import functools
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

import jsonschema
import kubernetes
import kubernetes_validate
import pytest
import yaml
from k8s_double_fluid import FluidSimulation

CRD_DIR = Path(__file__).resolve().parent / "crds"
KUBE_VERSION = "1.30"  # kubernetes_validate schemas used for core objects; also what /version reports
TOKEN = "k8s-api-double-token"
USER = "system:serviceaccount:default:airflow"  # who is "forbidden" in injected 403s
NOT_FOUND = "the server could not find the requested resource"
REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed"}
REASONS |= {409: "Conflict", 415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests"}
REASONS |= {500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
MESSAGES = {
    500: "Internal error occurred: injected by the Kubernetes API test double",
    503: "the server is currently unable to handle the request",
}
DNS1123 = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
DNS1123_RULE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    f"'{DNS1123}')"
)
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
SERVER_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")
ROUTE = re.compile(
    r"/(?:api/v1|apis/(?P<group>[^/]+)/(?P<version>[^/]+))(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?"
)
POD_FIELDS = {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName"}
POD_FIELDS |= {"status.phase", "status.podIP", "status.nominatedNodeName"}


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str = ""
    version: str = "v1"
    crd: str | None = None  # file name in tests/crds

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:  # "datasets.data.fluid.io", as API server messages name it
        return f"{self.plural}.{self.group}" if self.group else self.plural


FLUID_GROUP = "data.fluid.io"
RESOURCES = {
    r.plural: r
    for r in (
        Resource("pods", "Pod"),
        Resource("persistentvolumeclaims", "PersistentVolumeClaim"),
        Resource("datasets", "Dataset", FLUID_GROUP, "v1alpha1", "data.fluid.io_datasets.yaml"),
        Resource(
            "vineyardruntimes",
            "VineyardRuntime",
            FLUID_GROUP,
            "v1alpha1",
            "data.fluid.io_vineyardruntimes.yaml",
        ),
    )
}


class ApiError(Exception):
    """A Kubernetes ``Status`` failure; ``body()`` is what the API server sends."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details
        self.reason = reason or REASONS.get(code, "Unknown")

    def body(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        body |= {"message": self.message, "reason": self.reason, "code": self.code}
        return body | ({"details": self.details} if self.details is not None else {})


def status_error(code: int, res: Resource, name: str = "", verb: str = "get", ns=None, sub=None, causes=()):
    """The error the API server answers with ``code`` about ``res``/``name``, worded as it words it."""
    details = {"name": name, **({"group": res.group} if res.group else {}), "kind": res.plural}
    if code == 403:
        who = f'{res.qualified} "{name}"' if name and verb != "create" else res.qualified
        what = f"{res.plural}/{sub}" if sub else res.plural
        text = f'{who} is forbidden: User "{USER}" cannot {verb} resource "{what}" in API group "{res.group}"'
        return ApiError(403, f'{text} in the namespace "{ns}"' if ns else text, details=details)
    if code == 404:
        return ApiError(404, f'{res.qualified} "{name}" not found' if name else NOT_FOUND, details=details)
    if code == 409 and verb == "create":
        return ApiError(409, f'{res.qualified} "{name}" already exists', "AlreadyExists", details)
    if code == 409:
        text = "the object has been modified; please apply your changes to the latest version and try again"
        return ApiError(
            409, f'Operation cannot be fulfilled on {res.qualified} "{name}": {text}', details=details
        )
    if code == 422:
        parts = [f"{c['field']}: {c['message']}" for c in causes]
        text = parts[0] if len(parts) == 1 else f"[{', '.join(parts)}]"
        kind = f"{res.kind}.{res.group}" if res.group else res.kind
        return ApiError(
            422, f'{kind} "{name}" is invalid: {text}', details={**details, "causes": list(causes)}
        )
    return ApiError(
        code, MESSAGES.get(code, REASONS.get(code, "error")), REASONS.get(code, "Unknown"), details
    )


def _join(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)


def _causes(errors) -> list[dict]:
    """``details.causes`` for jsonschema errors, naming the field path as the API server does."""
    causes = []
    for err in errors:
        path, value = functools.reduce(_join, err.absolute_path, ""), json.dumps(err.instance)
        if err.validator == "required":
            missing = re.match(r"'(.*)' is a required property", err.message)
            cause = ("FieldValueRequired", "Required value", _join(path, missing[1] if missing else "?"))
        elif err.validator == "enum":
            allowed = ", ".join(json.dumps(v) for v in err.validator_value)
            cause = (
                "FieldValueNotSupported",
                f"Unsupported value: {value}: supported values: {allowed}",
                path,
            )
        elif err.validator == "type":
            got = JSON_TYPES.get(type(err.instance), "null")
            text = f'Invalid value: "{got}": {path} in body must be of type {err.validator_value}: "{got}"'
            cause = ("FieldValueTypeInvalid", text, path)
        else:
            cause = ("FieldValueInvalid", f"Invalid value: {value}: {err.message}", path)
        causes.append(dict(zip(("reason", "message", "field"), cause, strict=True)))
    return sorted(causes, key=lambda c: c["field"])


def _jsonschema(node: dict) -> dict:
    """A CRD structural schema as JSON Schema: int-or-string → anyOf, nullable; other x-kubernetes-* go."""
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _jsonschema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_jsonschema(sub) for sub in value]
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _prune(value: Any, schema: dict, path: str, unknown: list[str]) -> None:
    """Structural-schema pruning and defaulting in place, as the API server does; drops → ``unknown``."""
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            for key in [k for k in value if k not in props]:
                unknown.append(_join(path, key))
                del value[key]
        for key, sub in (props or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _prune(value[key], sub, _join(path, key), unknown)
        if isinstance(schema.get("additionalProperties"), dict):
            for key in value:
                _prune(value[key], schema["additionalProperties"], _join(path, key), unknown)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _prune(item, schema["items"], _join(path, i), unknown)


@functools.lru_cache
def load_crd_schema(path: Path, version: str = "v1alpha1") -> dict:
    """``spec.versions[<version>].schema.openAPIV3Schema`` of a CRD manifest (cached: do not mutate)."""
    crd = yaml.safe_load(path.read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


@functools.lru_cache
def _validator(path: Path) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_jsonschema(load_crd_schema(path)))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``null`` deletes)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    target = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


def _label_selector(text: str):
    reqs = []
    for part in re.split(r",(?![^()]*\))", text) if text.strip() else []:
        m = re.fullmatch(
            r"\s*(!?)\s*([\w./-]+)\s*(?:(==|=|!=)\s*([\w.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*", part
        )
        if not m or (m[1] and (m[3] or m[5])):
            raise ApiError(400, f"unable to parse requirement: {part!r}")
        reqs.append(m.groups())

    def match(obj: dict) -> bool:
        labels = obj["metadata"].get("labels") or {}
        for neg, key, op, val, setop, vals in reqs:
            have = labels.get(key)
            if op:
                ok = (have == val) == (op != "!=")
            elif setop:
                ok = (have in {v.strip() for v in vals.split(",")}) == (setop == "in")
            else:
                ok = (have is None) == bool(neg)
            if not ok:
                return False
        return True

    return match


def _field_selector(res: Resource, text: str):
    reqs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise ApiError(400, f"invalid selector: '{text}'; can't understand '{part}'")
        if m[1] not in {"metadata.name", "metadata.namespace"} | (
            POD_FIELDS if res.plural == "pods" else set()
        ):
            raise ApiError(400, f"field label not supported: {m[1]}")
        reqs.append(m.groups())

    def value(obj: Any, dotted: str) -> str:
        for part in dotted.split("."):
            obj = obj.get(part) if isinstance(obj, dict) else None
        return "" if obj is None else str(obj)

    return lambda obj: all((value(obj, f) == v) == (op != "!=") for f, op, v in reqs)


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
        code, body, headers = self.double.handle(self.command, self.path, self.headers, raw)
        data = json.dumps(body).encode()
        self.send_response(code)
        for name, value in [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            *headers,
        ]:
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
        context = {"cluster": "k8s-api-double", "user": "k8s-api-double", "namespace": namespace}
        Path(path).write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "k8s-api-double", "cluster": {"server": self.url}}],
                    "users": [{"name": "k8s-api-double", "user": {"token": self.token}}],
                    "contexts": [{"name": "k8s-api-double", "context": context}],
                    "current-context": "k8s-api-double",
                }
            )
        )
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
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        record = RecordedRequest(
            method, url.path.rstrip("/") or "/", query, None, headers.get("Content-Type")
        )
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
                raise self._injected(method, path, record.body, status, message, reason)
        if path == "/version":
            major, minor = KUBE_VERSION.split(".")
            info = dict.fromkeys(("gitCommit", "gitTreeState", "buildDate", "goVersion", "compiler"), "n/a")
            return 200, info | {
                "major": major,
                "minor": minor,
                "gitVersion": f"v{KUBE_VERSION}.0",
                "platform": "linux",
            }
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            version = {"groupVersion": f"{FLUID_GROUP}/v1alpha1", "version": "v1alpha1"}
            group = {"name": FLUID_GROUP, "versions": [version], "preferredVersion": version}
            return 200, {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [group] if self.fluid.installed else [],
            }
        if "watch" in query or "dryRun" in query:
            raise ApiError(400, "watch and dryRun are not supported by the Kubernetes API test double")
        self._reconcile()
        res, ns, name, sub = self._route(path)
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

    def _injected(self, method: str, path: str, body: Any, status: int, message, reason) -> ApiError:
        m = ROUTE.fullmatch(path)
        if not m or m["plural"] not in RESOURCES:
            err = ApiError(status, NOT_FOUND, REASONS.get(status, "Unknown"), {})
        else:
            new_name = ((body if isinstance(body, dict) else {}).get("metadata") or {}).get("name", "")
            verb = {"GET": "get" if m["name"] else "list", "POST": "create", "PUT": "update"}.get(method)
            cause = {"reason": "FieldValueInvalid", "message": message or "Invalid value", "field": "spec"}
            res = RESOURCES[m["plural"]]
            err = status_error(
                status, res, m["name"] or new_name, verb or method.lower(), m["ns"], m["sub"], [cause]
            )
        err.message, err.reason = message or err.message, reason or err.reason
        return err

    def _route(self, path: str) -> tuple[Resource, str | None, str | None, str | None]:
        m = ROUTE.fullmatch(path)
        res = RESOURCES.get(m["plural"]) if m else None
        if (
            res is None
            or (m["group"] or "", m["version"] or "v1") != (res.group, res.version)
            or (res.group == FLUID_GROUP and not self.fluid.installed)
            or m["sub"] not in (None, "status")
            or (m["name"] and not m["ns"])
        ):
            raise ApiError(404, NOT_FOUND, details={})
        return res, m["ns"], m["name"], m["sub"]

    # -- verbs ---------------------------------------------------------------------------------------------
    def _get(self, res: Resource, ns: str, name: str) -> dict:
        obj = self._objects[res.plural].get((ns, name))
        if obj is None:
            raise status_error(404, res, name)
        return obj

    def _list(self, res: Resource, ns: str | None, query: dict) -> dict:
        labels = _label_selector(query.get("labelSelector", ""))
        fields = _field_selector(res, query.get("fieldSelector", ""))
        items = [copy.deepcopy(o) for o in self.stored(res.plural, ns) if labels(o) and fields(o)]
        for item in [] if res.group else items:  # core list items carry no kind/apiVersion
            del item["kind"], item["apiVersion"]
        meta = {"resourceVersion": str(self._rv)}
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta, "items": items}

    def _decode(self, res: Resource, body: Any) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, f"the body of a {res.kind} write must be a JSON object with object metadata")
        obj = copy.deepcopy(body)
        if res.group and not (obj.get("kind") and obj.get("apiVersion")):
            raise ApiError(400, f"Object 'Kind' is missing in '{json.dumps(body)[:200]}'")
        obj.setdefault("metadata", {})
        kind, api_version = obj.setdefault("kind", res.kind), obj.setdefault("apiVersion", res.api_version)
        if (kind, api_version) != (res.kind, res.api_version):
            raise ApiError(400, f"{api_version}, Kind={kind} does not match the {res.qualified} endpoint")
        return obj

    def _admit(self, res: Resource, obj: dict, query: dict, warnings: list[str]) -> None:
        """Name check, then CRD pruning + defaulting + schema validation, or kubernetes_validate (strict)."""
        name = obj["metadata"].get("name") or ""
        if len(name) > 253 or not re.fullmatch(DNS1123, name):
            text = f'Invalid value: "{name}": {DNS1123_RULE}' if name else "Required value: name is required"
            cause = {"reason": "FieldValueInvalid" if name else "FieldValueRequired", "message": text}
            raise status_error(422, res, name, causes=[{**cause, "field": "metadata.name"}])
        if res.crd:
            unknown: list[str] = []
            _prune(obj, load_crd_schema(self.crd_dir / res.crd), "", unknown)
            if unknown and query.get("fieldValidation") == "Strict":
                raise ApiError(
                    400, "strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown)
                )
            if query.get("fieldValidation") != "Ignore":
                warnings += [f'unknown field "{u}"' for u in unknown]
            causes = _causes(_validator(self.crd_dir / res.crd).iter_errors(obj))
        else:
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
                causes = []
            except kubernetes_validate.ValidationError as err:
                causes = _causes([err])
        if causes:
            raise status_error(422, res, name, causes=causes)

    def _create(self, res: Resource, ns: str, body: Any, query: dict, warnings: list[str]) -> dict:
        obj = self._decode(res, body)
        meta = obj["metadata"]
        if meta.setdefault("namespace", ns) != ns:
            raise ApiError(
                400, "the namespace of the provided object does not match the namespace sent on the request"
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(
                secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5)
            )
        for key in (*SERVER_META, "resourceVersion"):
            meta.pop(key, None)
        obj.pop("status", None)
        if not res.group:
            obj["status"] = {"phase": "Pending"}
        self._admit(res, obj, query, warnings)
        if self.get_stored(res.plural, ns, meta["name"]) is not None:
            raise status_error(409, res, meta["name"], "create")
        return copy.deepcopy(self.save(res.plural, obj))

    def _patched(self, res: Resource, ns: str, name: str, patch: Any, content_type: str | None) -> dict:
        if (content_type or "").split(";")[0].strip() not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            raise ApiError(
                415, f"the Kubernetes API test double only accepts merge patches, not {content_type}"
            )
        if not isinstance(patch, dict):
            raise ApiError(400, "a merge patch must be a JSON object")
        return merge_patch(copy.deepcopy(self._get(res, ns, name)), patch)

    def _replace(self, res, ns, name, sub, body, query, warnings, patch=False) -> dict:
        old = self._get(res, ns, name)
        new = self._decode(res, body)
        meta = new["metadata"]
        if (meta.setdefault("name", name), meta.setdefault("namespace", ns)) != (name, ns):
            raise ApiError(400, f"the name or namespace of the object does not match the URL ({ns}/{name})")
        rv = meta.get("resourceVersion")
        if rv is None and res.group and not patch:
            cause = {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: 0x0: must be specified for an update",
            }
            raise status_error(422, res, name, causes=[{**cause, "field": "metadata.resourceVersion"}])
        if rv is not None and rv != old["metadata"]["resourceVersion"]:
            raise status_error(409, res, name, "update")
        if sub == "status":  # only the status changes
            new = {**copy.deepcopy(old), "status": new.get("status")}
            new = {k: v for k, v in new.items() if v is not None}
        else:  # everything but the status and server-set metadata
            meta.update({k: old["metadata"][k] for k in SERVER_META if k in old["metadata"]})
            new = {k: v for k, v in new.items() if k != "status"} | (
                {"status": old["status"]} if "status" in old else {}
            )
            if {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
                k: v for k, v in old.items() if k not in ("metadata", "status")
            }:
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        self._admit(res, new, query, warnings)
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
