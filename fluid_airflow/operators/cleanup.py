"""FluidCleanupOperator: delete a Dataset's leftover pods, the Dataset, then its runtime."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from fluid_airflow.fluid import manifests
from fluid_airflow.hooks.fluid import FluidHook, run_pod_labels


class FluidCleanupOperator(BaseOperator):
    """Tear down ``namespace/dataset_name`` in Fluid's order; succeeds when all is already gone.

    Meant to run with ``trigger_rule="all_done"`` (the default here) so a failed pipeline still
    frees its cache. Best used as a teardown task, ``cleanup.as_teardown(setups=[create, bind])``:
    as a plain last task its success would make a failed DAG run look successful. Order: pods
    that mount the Dataset's PVC (they block the Dataset's finalizer), the Dataset, the
    VineyardRuntime. Only the pods this DAG run's FluidPodOperator / ``@task.fluid`` tasks created
    are deleted; pods of other runs or users are named in the log and waited for, and a pod being
    deleted counts as gone, as Fluid counts it (:meth:`FluidHook.cleanup`). Each wait is bounded.

    :param dataset_name: the Dataset (and VineyardRuntime) name.
    :param namespace: default: the ``fluid`` connection's namespace.
    :param timeout: seconds to wait for each deletion step.
    :param poll_interval: seconds between checks.
    :param fluid_conn_id: Airflow connection of type ``fluid``.
    :returns: (XCom) ``{"pods": [...], "dataset": bool, "runtime": bool}``, True = deleted now.
    :raises FluidTimeoutError: a step did not finish; names what blocks it (and whose pods).
    """

    template_fields: Sequence[str] = ("dataset_name", "namespace")
    ui_color = "#ffd8c6"

    def __init__(
        self,
        *,
        dataset_name: str,
        namespace: str | None = None,
        timeout: float = 300.0,
        poll_interval: float = 5.0,
        fluid_conn_id: str = FluidHook.default_conn_name,
        trigger_rule: str = "all_done",
        **kwargs: Any,
    ) -> None:
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        self.dataset_name = dataset_name
        self.namespace = namespace
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.fluid_conn_id = fluid_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        hook = FluidHook(self.fluid_conn_id)
        namespace = hook.namespace(self.namespace)
        manifests.validate_names(self.dataset_name, namespace)
        result = hook.cleanup(
            namespace, self.dataset_name, self.timeout, self.poll_interval, run_pod_labels(context)
        )
        self.log.info("Cleanup of %s/%s: %s", namespace, self.dataset_name, result)
        return result
