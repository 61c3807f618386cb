#!/bin/sh
# Install fluid-airflow (from source) and its pinned dependencies into the Python environment of $PYTHON.
#
# The one install recipe of the image: deploy/image/Dockerfile RUNs it, and tests/test_deploy_install.py runs
# it unchanged into a fresh venv, then the @task.fluid runner's preflight against a real vineyardd.
#
# Usage: PYTHON=/opt/venv/bin/python sh install.sh <fluid-airflow source dir> [extra requirement ...]
#   <source dir>  a checkout (pyproject.toml, constraints.txt, fluid_airflow/)
#   extra         more requirements, resolved under the same constraints (the Dockerfile adds the
#                 metadata-DB driver the Helm chart's PostgreSQL needs; none in the test)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=${1:?usage: install.sh <fluid-airflow source dir> [extra requirement ...]}
shift
python=${PYTHON:-python3}

# -c: every transitive dependency at the version `make test` ran with (constraints.txt); -r: the image's
# top-level pins. The [examples] extra brings what dags/fluid_vineyard_pipeline.py imports.
"$python" -m pip install --quiet -c "$src/constraints.txt" -r "$here/requirements.txt" "$src[examples]" "$@"
"$python" -m pip check

# Fail the build, not the first task, when the client cannot load (no wheel for this platform/interpreter).
"$python" -c "import importlib.metadata as m, vineyard, fluid_airflow.runner.task; print('vineyard', m.version('vineyard'))"
