"""The Airflow UI page of fluid-airflow: Vineyard handoffs per DAG run, served by the API server."""

URL_PREFIX = "/fluid"
PAGE = "/handoffs"
