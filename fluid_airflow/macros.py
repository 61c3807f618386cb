"""Template macros the provider registers (plugin ``macros``): ``{{ macros.fluid_airflow.<name>(...) }}``.

Airflow 3.3 attaches a plugin's ``macros`` as ``airflow.sdk.execution_time.macros.<plugin name>``
when a task builds its template context (task-sdk 1.3.2 ``execution_time/task_runner.py``
``get_template_context`` -> ``plugins_manager.integrate_macros_plugins``), so every DAG can use
them without ``user_defined_macros``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fluid_airflow import exceptions as errors

DIGEST_CHARS = 10  # hex digits of the run digest: 40 bits, collision-free for any real run count
PREFIX_MAX = 20  # name <= 32 chars: Fluid's derived node labels then fit namespaces up to 15 chars
_PREFIX = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def run_dataset_name(prefix: str, run: Any, dag_id: str | None = None) -> str:
    """A Dataset name unique to one DAG run, valid as a DNS-1035 label, stable for that run.

    ``<prefix>-r<10 hex digits of sha1("<dag_id>/<run_id>")>``, e.g. ``flights-r3f9a2c1d07``.
    It depends only on the DAG id and run id, so it works for every run type (scheduled,
    manual, REST-triggered runs without a logical date, backfills), differs between two runs
    of one day and between DAGs, and is the same for every task (and retry) of the run, so the
    create, bind, step and cleanup tasks all name the same Dataset. Use it in a template::

        dataset_name="{{ macros.fluid_airflow.run_dataset_name('flights', dag_run) }}"

    :param prefix: readable first part: lower-case letters, digits and '-', starting with a
        letter, ending with a letter or digit, at most 20 characters.
    :param run: the ``dag_run`` (or ``ti``) of the template context, or a run id string.
    :param dag_id: the DAG id when ``run`` is a run id string (else taken from ``run``).
    :returns: the name, at most 32 characters.
    :raises FluidSpecError: ``prefix`` is not such a label, or ``run`` carries no run id.
    """
    if not isinstance(prefix, str) or len(prefix) > PREFIX_MAX or not _PREFIX.match(prefix):
        raise errors.FluidSpecError(
            f"run_dataset_name: prefix {prefix!r} must be lower-case letters, digits and '-', start with a "
            f"letter, end with a letter or digit and have at most {PREFIX_MAX} characters, e.g. 'flights'."
        )
    run_id = run if isinstance(run, str) else getattr(run, "run_id", None)
    dag = dag_id if dag_id is not None else getattr(run, "dag_id", "")
    if not run_id:
        raise errors.FluidSpecError(
            f"run_dataset_name({prefix!r}, {run!r}): pass the template's dag_run (or a run id), e.g. "
            f"{{{{ macros.fluid_airflow.run_dataset_name('{prefix}', dag_run) }}}}"
        )
    digest = hashlib.sha1(f"{dag}/{run_id}".encode()).hexdigest()[:DIGEST_CHARS]
    return f"{prefix}-r{digest}"


MACROS = [run_dataset_name]
