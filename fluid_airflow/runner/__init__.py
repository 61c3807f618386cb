"""The task side of ``@task.fluid``: :mod:`.task` runs the function next to the Dataset's vineyardd (in a pod,
``python -m fluid_airflow.runner.task``, or in a local process); :mod:`.local_run` forks it on the local
backend, :mod:`.warm` keeps a pre-imported process per Dataset to fork from."""
