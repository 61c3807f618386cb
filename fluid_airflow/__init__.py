"""fluid-airflow: an Apache Airflow 3 provider for Fluid and Vineyard.

Importing this package is cheap on purpose: Airflow imports providers while parsing DAGs, and
Vineyard's client (~1 s to import) must never be imported or connected at DAG-parse time.
"""

__version__ = "0.1.0"

from fluid_airflow import _vineyard_import

# Before anything imports vineyard: it needs pkg_resources, which setuptools >= 82 lacks.
_vineyard_import.install()
