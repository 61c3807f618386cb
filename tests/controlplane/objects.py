"""Objects the tests need on the control plane: kwok Nodes and least-privilege service-account tokens."""

from __future__ import annotations

import time

from kubernetes import client
from kubernetes.client.rest import ApiException

from .procs import ControlPlaneError

DEFAULT_CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110"}


def create_node(
    core: client.CoreV1Api,
    name: str,
    labels: dict[str, str],
    capacity: dict[str, str] | None = None,
    internal_ip: str | None = None,
) -> client.V1Node:
    """Create Node ``name`` for kwok and wait (<= 30 s) until its Ready condition is True.

    ``capacity`` (resource name -> quantity, default 8 CPU / 32Gi / 110 pods) becomes both capacity and
    allocatable: kwok's ``node-initialize`` stage keeps a Node's own ``status.capacity``/``allocatable`` and
    addresses, and adds what is missing (sigs.k8s.io/kwok v0.8.0
    ``kustomize/stage/node/fast/node-initialize.yaml``): a Hostname address ``localhost`` and kwok's port as
    kubelet endpoint, through which the API server reaches kwok for exec and logs. ``internal_ip`` (a
    127.0.0.0/8 address, distinct per node) becomes the InternalIP, which kwok also gives the node's
    hostNetwork pods as pod IP (``pkg/kwok/controllers/pod_controller.go`` ``funcPodIPsWith``): Fluid's
    Vineyard workers are hostNetwork pods, so each node's workers get that node's IP. No taint is set.
    """
    quantities = dict(capacity or DEFAULT_CAPACITY)
    addresses = [client.V1NodeAddress(type="InternalIP", address=internal_ip)] if internal_ip else None
    node = client.V1Node(
        metadata=client.V1ObjectMeta(
            name=name,
            labels={"kubernetes.io/hostname": name, "type": "kwok", **labels},
            annotations={"kwok.x-k8s.io/node": "fake"},
        ),
        status=client.V1NodeStatus(capacity=quantities, allocatable=quantities, addresses=addresses),
    )
    core.create_node(node)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = core.read_node(name)
        if any(c.type == "Ready" and c.status == "True" for c in got.status.conditions or []):
            return got
        time.sleep(0.2)
    raise ControlPlaneError(f"kwok did not make Node {name} Ready within 30 s: is the kwok daemon running?")


def service_account_token(
    api: client.ApiClient, namespace: str, name: str, role: str, seconds: int = 3600
) -> str:
    """Create (or reuse) ServiceAccount ``namespace/name``, bind it to Role ``role`` of the same
    namespace with RoleBinding ``<name>-<role>``, and return a bound
    token (TokenRequest API) valid ``seconds`` (>= 600).

    The Role itself must exist (create it from the documented rules first): a binding to a missing Role grants
    nothing, so a missing Role raises ControlPlaneError naming it.
    """
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    try:
        rbac.read_namespaced_role(role, namespace)
    except ApiException as exc:
        raise ControlPlaneError(f"Role {namespace}/{role} not found ({exc.status}): create it first") from exc
    _create_or_keep(
        lambda: core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
    )
    binding = client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name=f"{name}-{role}"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=role),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)],
    )
    _create_or_keep(lambda: rbac.create_namespaced_role_binding(namespace, binding))
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
    )
    return core.create_namespaced_service_account_token(name, namespace, request).status.token


def _create_or_keep(create) -> None:
    try:
        create()
    except ApiException as exc:
        if exc.status != 409:
            raise
