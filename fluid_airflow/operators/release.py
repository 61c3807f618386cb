"""FluidReleaseRunOperator: release a DAG run's Vineyard XCom objects from a task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from fluid_airflow.links import VineyardHandoffsLink


class FluidReleaseRunOperator(BaseOperator):
    """Delete every Vineyard object the XCom backend stored for a DAG run, and their names.

    For users who prefer an explicit task to the provider's run-end listener (``[fluid]
    keep_for``). Use it as a teardown, ``release.as_teardown(setups=...)``, or last with
    ``trigger_rule="all_done"`` (the default here). Consumers that run after it would fail with
    ``VineyardObjectLostError``.

    :param dag_id_to_release: default: this task's DAG. Templated.
    :param run_id: default: this task's DAG run (``{{ run_id }}``). Templated.
    :returns: (XCom) ``{"objects": int, "bytes": int}`` released.
    :raises VineyardConnectionError: vineyardd does not answer.
    """

    template_fields: Sequence[str] = ("dag_id_to_release", "run_id")
    ui_color = "#ffe7c6"
    operator_extra_links = (VineyardHandoffsLink(),)

    def __init__(
        self,
        *,
        dag_id_to_release: str | None = None,
        run_id: str = "{{ run_id }}",
        trigger_rule: str = "all_done",
        **kwargs: Any,
    ) -> None:
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        self.dag_id_to_release = dag_id_to_release
        self.run_id = run_id

    def execute(self, context: Any) -> dict[str, int]:
        from fluid_airflow.vineyard.lifecycle.release import release_run
        from fluid_airflow.vineyard.xcom import backend_hook

        dag_id = self.dag_id_to_release or context["dag"].dag_id
        report = release_run(backend_hook().get_conn(), dag_id, self.run_id)
        self.log.info(
            "Released %d Vineyard objects (%d bytes) of DAG run %s/%s",
            report.objects,
            report.bytes,
            dag_id,
            self.run_id,
        )
        return {"objects": report.objects, "bytes": report.bytes}
