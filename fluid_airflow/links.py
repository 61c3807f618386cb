"""Operator extra link from Fluid tasks to the handoffs page, filtered to the task's DAG run.

Airflow 3 computes an operator link on the worker when the task ends and keeps it as an XCom
(``airflow/sdk/bases/operatorlink.py``); the class is registered in the provider info
(``extra-links``) so the API server can deserialize DAGs that use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

from airflow.sdk import BaseOperatorLink

from fluid_airflow.ui import PAGE, URL_PREFIX

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class VineyardHandoffsLink(BaseOperatorLink):
    """ "Vineyard handoffs": the page listing the objects of this task's DAG run."""

    name = "Vineyard handoffs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk import conf

        base = conf.get("api", "base_url", fallback="").rstrip("/")
        query = urlencode({"dag_id": ti_key.dag_id, "run_id": ti_key.run_id})
        return f"{base}{URL_PREFIX}{PAGE}?{query}"
