"""FluidCreateDatasetOperator: create a Fluid Dataset, or adopt an identical one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from fluid_airflow.fluid import manifests
from fluid_airflow.hooks.fluid import FluidHook


class FluidCreateDatasetOperator(BaseOperator):
    """Create the Dataset ``namespace/dataset_name`` for a VineyardRuntime (idempotent).

    A Dataset that already exists with the same spec is adopted (a re-run succeeds); one with a
    different spec fails the task. Input is validated before any request.

    :param dataset_name: DNS-1035 label, short enough for Fluid's derived node labels.
    :param namespace: default: the ``fluid`` connection's namespace.
    :param access_modes: PVC access modes (default ``["ReadWriteMany"]``).
    :param placement: ``Exclusive`` (Fluid's default) or ``Shared``.
    :param node_affinity: ``{"required": <V1NodeSelector dict>}`` for the cache workers.
    :param tolerations: V1Toleration dicts for the cache workers.
    :param labels: metadata labels; :param annotations: metadata annotations.
    :param fluid_conn_id: Airflow connection of type ``fluid``.
    :returns: (XCom) ``{"namespace", "name", "uid", "created"}``.
    :raises FluidSpecError: invalid input (before any request) or HTTP 422.
    :raises FluidConflictError: the Dataset exists with another spec, or is being deleted.
    :raises FluidNotInstalledError, FluidPermissionError, FluidApiError: API failures.
    """

    template_fields: Sequence[str] = ("dataset_name", "namespace", "labels", "annotations")
    ui_color = "#c6e2ff"

    def __init__(
        self,
        *,
        dataset_name: str,
        namespace: str | None = None,
        access_modes: Sequence[str] = ("ReadWriteMany",),
        placement: str | None = None,
        node_affinity: dict[str, Any] | None = None,
        tolerations: list[dict[str, Any]] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        fluid_conn_id: str = FluidHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset_name = dataset_name
        self.namespace = namespace
        self.access_modes = list(access_modes)
        self.placement = placement
        self.node_affinity = node_affinity
        self.tolerations = tolerations
        self.labels = labels
        self.annotations = annotations
        self.fluid_conn_id = fluid_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        hook = FluidHook(self.fluid_conn_id)
        namespace = hook.namespace(self.namespace)
        manifest = manifests.build_dataset(
            self.dataset_name, namespace, access_modes=self.access_modes, placement=self.placement,
            node_affinity=self.node_affinity, tolerations=self.tolerations, labels=self.labels,
            annotations=self.annotations,
        )  # fmt: skip
        obj, created = hook.ensure(manifests.DATASET_PLURAL, manifest)
        self.log.info("Dataset %s/%s %s", namespace, self.dataset_name, "created" if created else "adopted")
        return {
            "namespace": namespace,
            "name": self.dataset_name,
            "uid": (obj.get("metadata") or {}).get("uid"),
            "created": created,
        }
