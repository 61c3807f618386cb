"""A real Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok) with
Fluid's own Dataset and Vineyard runtime controllers, for the tests. Built by ``make controlplane``."""

from .cluster import ControlPlane, ensure_built, write_kubeconfig
from .procs import ControlPlaneError

__all__ = ["ControlPlane", "ControlPlaneError", "ensure_built", "write_kubeconfig"]
