"""Fluid control plane: manifests, readiness and the API clients (Kubernetes and local)."""
