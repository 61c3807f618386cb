"""Overhead of ``@task.fluid`` over a plain ``@task`` on the local backend, under a real scheduler.

A real deployment (``tests/deployment.py``: api-server, scheduler, dag-processor, triggerer,
LocalExecutor, every task in its own supervised process) runs ``fa_fluid_overhead``
(``tests/dags/``): the same trivial function as ``plain_<i>`` (``@task``) and ``fluid_<i>``
(``@task.fluid``), alternating. Each task's duration is Airflow's own (``duration`` of
``GET /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances``, end minus start of the task's
execution, seconds). The overhead is median(fluid) - median(plain), over every pair of every run.

``python -m bench.fluid_overhead [runs]`` measures it alone and prints
``overhead_task_fluid_local_s=<seconds>``; ``python -m bench`` includes it.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

DAG_ID = "fa_fluid_overhead"


def _durations(deployment: Any, run_id: str) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"plain": [], "fluid": []}
    for ti in deployment.task_instances(DAG_ID, run_id):
        kind = ti["task_id"].split("_")[0]
        if kind in found and ti["state"] == "success" and ti.get("duration") is not None:
            found[kind].append(float(ti["duration"]))
    return found


def measure(runs: int = 2) -> dict[str, Any]:
    """Start a deployment, run the bench DAG ``runs`` times, stop it.

    :returns: ``{"overhead_s": float, "fluid_s": [...], "plain_s": [...]}`` (seconds).
    :raises RuntimeError: a run did not succeed (its task states are in the message).
    """
    from bench import deployment_class

    deployment = deployment_class()()
    samples: dict[str, list[float]] = {"plain": [], "fluid": []}
    try:
        deployment.start()
        for _ in range(runs):
            run_id = deployment.trigger(DAG_ID)
            if deployment.wait_run(DAG_ID, run_id, timeout=600) != "success":
                raise RuntimeError(f"bench: {DAG_ID} run failed: {deployment.task_states(DAG_ID, run_id)}")
            for kind, values in _durations(deployment, run_id).items():
                samples[kind] += values
    finally:
        deployment.stop()
        import shutil

        shutil.rmtree(deployment.home, ignore_errors=True)
        shutil.rmtree(deployment.runtime, ignore_errors=True)
    overhead = statistics.median(samples["fluid"]) - statistics.median(samples["plain"])
    return {"overhead_s": round(overhead, 3), "fluid_s": samples["fluid"], "plain_s": samples["plain"]}


def main(argv: list[str]) -> int:
    result = measure(int(argv[0]) if argv else 2)
    print(f"bench: @task.fluid durations (s): {sorted(result['fluid_s'])}")
    print(f"bench: plain @task durations (s): {sorted(result['plain_s'])}")
    print(f"overhead_task_fluid_local_s={result['overhead_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
