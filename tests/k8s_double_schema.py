"""Kubernetes API semantics for the API test double (``tests/k8s_double.py``): no state, no HTTP.

The served resource types and their URL route; ``Status`` errors worded as the API server words them;
admission of a written object (body decoding, name check, structural-schema pruning and defaulting of custom
resources with ``Warning``s, jsonschema validation against the vendored Fluid CRDs in ``tests/crds``,
``kubernetes_validate`` for core objects); JSON merge patch; label and field selectors.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

CRD_DIR = Path(__file__).resolve().parent / "crds"
KUBE_VERSION = "1.30"  # kubernetes_validate schemas used for core objects; also what /version reports
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
ROUTE = re.compile(
    r"/(?:api/v1|apis/(?P<group>[^/]+)/(?P<version>[^/]+))(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?"
)
LABEL_REQUIREMENT = re.compile(
    r"\s*(!?)\s*([\w./-]+)\s*(?:(==|=|!=)\s*([\w.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*"
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
        *(
            Resource(plural, kind, FLUID_GROUP, "v1alpha1", f"{FLUID_GROUP}_{plural}.yaml")
            for plural, kind in (("datasets", "Dataset"), ("vineyardruntimes", "VineyardRuntime"))
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
        what = f'Operation cannot be fulfilled on {res.qualified} "{name}"'
        text = "the object has been modified; please apply your changes to the latest version and try again"
        return ApiError(409, f"{what}: {text}", details=details)
    if code == 422:
        parts = [f"{c['field']}: {c['message']}" for c in causes]
        text = parts[0] if len(parts) == 1 else f"[{', '.join(parts)}]"
        kind = f"{res.kind}.{res.group}" if res.group else res.kind
        details["causes"] = list(causes)
        return ApiError(422, f'{kind} "{name}" is invalid: {text}', details=details)
    return ApiError(code, MESSAGES.get(code, REASONS.get(code, "error")), details=details)


def injected_error(method: str, path: str, body: Any, status: int, message=None, reason=None) -> ApiError:
    """The Status error ``status`` for a request: ``status_error``'s unless ``message``/``reason`` given."""
    m = ROUTE.fullmatch(path)
    if not m or m["plural"] not in RESOURCES:
        err = ApiError(status, NOT_FOUND, details={})
    else:
        new_name = ((body if isinstance(body, dict) else {}).get("metadata") or {}).get("name", "")
        verb = {"GET": "get" if m["name"] else "list", "POST": "create", "PUT": "update"}.get(method)
        cause = {"reason": "FieldValueInvalid", "message": message or "Invalid value", "field": "spec"}
        res, name = RESOURCES[m["plural"]], m["name"] or new_name
        err = status_error(status, res, name, verb or method.lower(), m["ns"], m["sub"], [cause])
    err.message, err.reason = message or err.message, reason or err.reason
    return err


def discovery(path: str, fluid_installed: bool) -> dict | None:
    """What ``/version``, ``/api`` and ``/apis`` answer; None for another path."""
    if path == "/version":
        major, minor = KUBE_VERSION.split(".")
        n_a = dict.fromkeys(("gitCommit", "gitTreeState", "buildDate", "goVersion", "compiler"), "n/a")
        return n_a | dict(major=major, minor=minor, gitVersion=f"v{KUBE_VERSION}.0", platform="linux")
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        version = {"groupVersion": f"{FLUID_GROUP}/v1alpha1", "version": "v1alpha1"}
        group = {"name": FLUID_GROUP, "versions": [version], "preferredVersion": version}
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group] if fluid_installed else []}
    return None


def route(path: str, fluid_installed: bool) -> tuple[Resource, str | None, str | None, str | None]:
    """(resource, namespace, name, subresource) of a resource URL path; 404 for what is not served."""
    m = ROUTE.fullmatch(path)
    res = RESOURCES.get(m["plural"]) if m else None
    if (
        res is None
        or (m["group"] or "", m["version"] or "v1") != (res.group, res.version)
        or (res.group == FLUID_GROUP and not fluid_installed)
        or m["sub"] not in (None, "status")
        or (m["name"] and not m["ns"])
    ):
        raise ApiError(404, NOT_FOUND, details={})
    return res, m["ns"], m["name"], m["sub"]


# -- admission ---------------------------------------------------------------------------------------------
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
            text = f"Unsupported value: {value}: supported values: {allowed}"
            cause = ("FieldValueNotSupported", text, path)
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


def decode(res: Resource, body: Any) -> dict:
    """A copy of a written ``body``, with ``kind``/``apiVersion`` checked (custom resources: required)."""
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


def admit(res: Resource, obj: dict, crd_dir: Path, query: dict, warnings: list[str]) -> None:
    """Name check, then CRD pruning + defaulting + schema validation, or kubernetes_validate (strict)."""
    name = obj["metadata"].get("name") or ""
    if len(name) > 253 or not re.fullmatch(DNS1123, name):
        text = f'Invalid value: "{name}": {DNS1123_RULE}' if name else "Required value: name is required"
        cause = {"reason": "FieldValueInvalid" if name else "FieldValueRequired", "message": text}
        raise status_error(422, res, name, causes=[{**cause, "field": "metadata.name"}])
    if res.crd:
        unknown: list[str] = []
        _prune(obj, load_crd_schema(crd_dir / res.crd), "", unknown)
        unknown = [f'unknown field "{u}"' for u in unknown]
        if unknown and query.get("fieldValidation") == "Strict":
            raise ApiError(400, "strict decoding error: " + ", ".join(unknown))
        if query.get("fieldValidation") != "Ignore":
            warnings += unknown
        causes = _causes(_validator(crd_dir / res.crd).iter_errors(obj))
    else:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            causes = []
        except kubernetes_validate.ValidationError as err:
            causes = _causes([err])
    if causes:
        raise status_error(422, res, name, causes=causes)


# -- patches and selectors ---------------------------------------------------------------------------------
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


def label_selector(text: str):
    """A predicate for a ``labelSelector`` (``=``, ``==``, ``!=``, ``in``, ``notin``, ``[!]key``)."""
    reqs = []
    for part in re.split(r",(?![^()]*\))", text) if text.strip() else []:
        m = LABEL_REQUIREMENT.fullmatch(part)
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


def field_selector(res: Resource, text: str):
    """A predicate for a ``fieldSelector`` (``=``, ``==``, ``!=`` on the fields the API server allows)."""
    allowed = {"metadata.name", "metadata.namespace"} | (POD_FIELDS if res.plural == "pods" else set())
    reqs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise ApiError(400, f"invalid selector: '{text}'; can't understand '{part}'")
        if m[1] not in allowed:
            raise ApiError(400, f"field label not supported: {m[1]}")
        reqs.append(m.groups())

    def value(obj: Any, dotted: str) -> str:
        for part in dotted.split("."):
            obj = obj.get(part) if isinstance(obj, dict) else None
        return "" if obj is None else str(obj)

    return lambda obj: all((value(obj, f) == v) == (op != "!=") for f, op, v in reqs)
