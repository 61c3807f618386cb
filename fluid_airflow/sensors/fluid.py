"""FluidDatasetSensor: wait for a Fluid Dataset to be ``Bound`` or fully ready.

``Bound`` is Fluid's own Dataset phase (runtime master and at least one worker ready,
docs/design.md §16); ``ready`` also requires every VineyardRuntime worker ready (§16), as judged by
:func:`fluid_airflow.fluid.status.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, conf

from fluid_airflow import exceptions as errors
from fluid_airflow.hooks.fluid import FluidHook
from fluid_airflow.triggers.fluid import FluidDatasetTrigger, apply_target, check_target


class FluidDatasetSensor(BaseSensorOperator):
    """Succeed once the Dataset ``dataset_name`` reaches ``target``.

    :param dataset_name: name of the Dataset (and of its VineyardRuntime). Templated.
    :param namespace: its namespace; None = the connection's ``namespace`` extra, else
        ``default``. Templated.
    :param fluid_conn_id: Airflow connection of type ``fluid``.
    :param target: ``bound`` (Dataset phase ``Bound``) or ``ready`` (``Bound`` and all
        ``spec.replicas`` workers ready).
    :param deferrable: wait in the triggerer (:class:`FluidDatasetTrigger`) instead of a worker
        slot; the trigger polls every ``poke_interval`` seconds for at most ``timeout`` seconds.
    :raises FluidSpecError: unknown ``target`` (at construction).
    :raises FluidRuntimeFailedError: the Dataset is missing, ``Failed`` or being deleted, or a
        worker pod cannot start (never a silent ``False``).
    :raises FluidTimeoutError: (deferrable) not reached within ``timeout`` seconds; non-deferrable
        sensors raise Airflow's ``AirflowSensorTimeout`` instead.
    :raises FluidApiError: (deferrable) the trigger could not query the API.
    """

    template_fields: Sequence[str] = ("dataset_name", "namespace")
    ui_color = "#d4ecf7"

    def __init__(
        self,
        *,
        dataset_name: str,
        namespace: str | None = None,
        fluid_conn_id: str = FluidHook.default_conn_name,
        target: str = "bound",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset_name = dataset_name
        self.namespace = namespace
        self.fluid_conn_id = fluid_conn_id
        self.target = check_target(target)
        self.deferrable = deferrable

    def _where(self, namespace: str) -> str:
        return f"Dataset {namespace}/{self.dataset_name}"

    def poke(self, context: Context) -> bool:
        """One readiness check. :returns: True once ``target`` is reached.

        :raises FluidRuntimeFailedError: the failed state described in the class docstring.
        """
        hook = FluidHook(self.fluid_conn_id)
        namespace = hook.namespace(self.namespace)
        verdict = apply_target(self.target, hook.readiness(namespace, self.dataset_name))
        if verdict.failed:
            raise errors.FluidRuntimeFailedError(f"{self._where(namespace)} failed: {verdict.message}")
        if verdict.ready:
            self.log.info("%s is %s: %s", self._where(namespace), self.target, verdict.message)
            return True
        self.log.info("%s not %s yet: %s", self._where(namespace), self.target, verdict.message)
        return False

    def execute(self, context: Context) -> Any:
        """Poke as usual, or with ``deferrable=True`` defer at once to the trigger."""
        if not self.deferrable:
            return super().execute(context)
        namespace = FluidHook(self.fluid_conn_id).namespace(self.namespace)
        self.defer(
            trigger=FluidDatasetTrigger(
                fluid_conn_id=self.fluid_conn_id,
                namespace=namespace,
                dataset_name=self.dataset_name,
                target=self.target,
                timeout=float(self.timeout),
                poll_interval=float(self.poke_interval),
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> None:
        """Resume after the trigger's event.

        :raises FluidRuntimeFailedError: event ``failed``.
        :raises FluidTimeoutError: event ``timeout``.
        :raises FluidApiError: event ``error``, or an event of unknown shape.
        """
        state = (event or {}).get("status")
        message = (event or {}).get("message") or f"no message (event {event!r})"
        if state == "ready":
            self.log.info("%s", message)
            return
        if state == "failed":
            raise errors.FluidRuntimeFailedError(message)
        if state == "timeout":
            raise errors.FluidTimeoutError(message)
        raise errors.FluidApiError(message if state == "error" else f"unexpected trigger event {event!r}")
