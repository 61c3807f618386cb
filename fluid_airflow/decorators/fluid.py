"""``@task.fluid``: run a Python function next to a Dataset's data, passing Vineyard references.

Like ``@task.kubernetes`` (cncf-kubernetes ``decorators/kubernetes.py``), the function's source
runs in a pod — here a :class:`~fluid_airflow.operators.pod.FluidPodOperator` pod that mounts the
Dataset and prefers the nodes holding the inputs. Unlike it:

- arguments that are Vineyard references stay references on the Airflow worker (the backend is
  told not to load them while Airflow renders the arguments) and are resolved inside the pod by
  :mod:`fluid_airflow.runner.task`; the return value is stored there and only its
  reference comes back through the XCom sidecar. The worker never holds a payload;
- arguments travel as JSON (Airflow serde), not pickle;
- on the local backend (a ``fluid`` connection with ``backend: local``) the same runner runs in
  a fork of the task process against the Dataset's local vineyardd
  (:mod:`fluid_airflow.runner.local_run`), so a DAG runs unchanged on a laptop.

The pod image must have ``fluid-airflow`` installed (it brings vineyard, numpy, pandas, pyarrow).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from airflow.providers.common.compat.sdk import DecoratedMappedOperator, DecoratedOperator, TaskDecorator
from airflow.sdk.bases.decorator import _TaskDecorator

from fluid_airflow import exceptions as errors
from fluid_airflow.operators.pod import FluidPodOperator

if TYPE_CHECKING:
    from airflow.sdk.definitions.xcom_arg import PlainXComArg

SPEC_ENV = "__FLUID_TASK_SPEC"
# KPO options that shape what the function sees (files, environment, the pod itself): a local
# process cannot honour them, so the local backend refuses them instead of ignoring them.
POD_ONLY_OPTIONS = (
    "volumes",
    "volume_mounts",
    "secrets",
    "configmaps",
    "env_from",
    "init_containers",
    "pod_template_file",
    "pod_template_dict",
    "full_pod_spec",
)
# Placement and image options: meaningless for a local process but harmless (a DAG written for a
# cluster runs unchanged on a laptop), so they are only logged.
PLACEMENT_OPTIONS = ("image", "node_selector", "affinity", "tolerations", "container_resources")
XCOM_RETURN = "/airflow/xcom/return.json"


def _references(value: Any) -> list[dict[str, Any]]:
    """Every Vineyard reference in ``value`` (nested in lists, tuples, dicts, trees)."""
    from fluid_airflow.vineyard.data import tree
    from fluid_airflow.vineyard.data.reference import is_reference

    if is_reference(value) or tree.is_tree(value):
        return tree.references_in(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in _references(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in _references(v)]
    return []


class _FluidDecoratedOperator(DecoratedOperator, FluidPodOperator):
    """The operator behind ``@task.fluid``; takes every FluidPodOperator argument."""

    custom_operator_name = "@task.fluid"
    # cmds and arguments are ours; everything else of KPO stays templated.
    template_fields: Sequence[str] = tuple(
        {"op_args", "op_kwargs", *FluidPodOperator.template_fields} - {"cmds", "arguments"}
    )
    shallow_copy_attrs: Sequence[str] = ("python_callable",)

    def __init__(self, *, namespace: str | None = None, **kwargs: Any) -> None:
        name = kwargs.pop(
            "name", f"fluid-task-{kwargs['python_callable'].__name__}".replace("_", "-").lower()
        )
        kwargs.setdefault("do_xcom_push", True)
        super().__init__(namespace=namespace, name=name, cmds=["placeholder-command"], **kwargs)
        self._local_pid: int | None = None

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        from fluid_airflow.vineyard.xcom import references_only

        # Upstream XComArgs are resolved here: keep Vineyard references as references.
        with references_only():
            super().render_template_fields(context, jinja_env)

    def _spec(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.serde import serialize

        from fluid_airflow.vineyard.xcom import references_only

        ti = context["ti"]
        with references_only():  # a lazy mapped upstream is read now: keep its items references
            args = [list(a) if _is_lazy(a) else a for a in self.op_args]
            kwargs = {k: list(v) if _is_lazy(v) else v for k, v in self.op_kwargs.items()}
        for key in ("ti", "task_instance", "dag_run", "params", "dag", "task"):
            kwargs.pop(key, None)  # context objects cannot travel; use arguments instead
        return {
            "function": self.python_callable.__name__,
            "source": self.get_python_source(),
            "inputs": serialize({"args": args, "kwargs": kwargs}),
            "scope": {
                "dag_id": ti.dag_id,
                "run_id": ti.run_id,
                "task_id": ti.task_id,
                "map_index": ti.map_index,
            },
            "multiple_outputs": bool(self.multiple_outputs),
            "store": bool(self.do_xcom_push),  # do_xcom_push=False: the runner stores nothing
            "dataset": f"{self.dataset_namespace or '(connection namespace)'}/{self.dataset_name}",
        }

    def execute(self, context: Any) -> Any:
        from fluid_airflow.hooks.fluid import FluidHook

        spec = self._spec(context)
        self.input_refs = _references([self.op_args, self.op_kwargs])
        hook = FluidHook(self.fluid_conn_id)
        if hook.backend == "local":
            return self._execute_local(hook, spec)
        if not self.image:
            raise errors.FluidSpecError(
                f"@task.fluid {self.task_id!r} runs in a pod on the kubernetes backend: give image=... "
                "(an image with fluid-airflow installed)."
            )
        encoded = base64.b64encode(json.dumps(spec).encode()).decode()
        from airflow.providers.cncf.kubernetes.backcompat.backwards_compat_converters import (
            convert_env_vars_or_raise_error,
        )
        from kubernetes.client import models as k8s

        # env_vars may still be the user's (rendered) dict: KPO converts it only when building the pod.
        current = convert_env_vars_or_raise_error(self.env_vars) if self.env_vars else []
        self.env_vars = [*current, k8s.V1EnvVar(name=SPEC_ENV, value=encoded)]
        self.cmds = ["python", "-m", "fluid_airflow.runner.task", "--spec-env", SPEC_ENV]
        # Without do_xcom_push KPO adds no XCom sidecar (so no /airflow/xcom volume): the runner then
        # gets no --output and stores nothing (cncf-kubernetes 10.25 operators/pod.py build_pod_request_obj).
        self.arguments = ["--output", XCOM_RETURN] if self.do_xcom_push else []
        return super().execute(context)  # the value comes from extract_xcom, sync or deferrable

    def extract_xcom(self, pod: Any, *, ignore_kill_failure: bool = True) -> Any:
        """The runner's output read from the XCom sidecar, as the value the task returns.

        KPO reads the sidecar here on both of its paths: ``execute_sync`` and, when deferrable,
        ``trigger_reentry`` after the trigger fired; both return (or, on failure, push) what this
        returns (cncf-kubernetes 10.25 ``operators/pod.py``). Decoding here, and only here, gives a
        deferrable task the value a non-deferrable one returns.
        """
        value = super().extract_xcom(pod, ignore_kill_failure=ignore_kill_failure)
        return None if value is None else _from_runner(value, bool(self.multiple_outputs))

    def _check_local_options(self) -> None:
        """:raises FluidSpecError: a pod-only option is set (see :data:`POD_ONLY_OPTIONS`)."""
        given = [name for name in POD_ONLY_OPTIONS if getattr(self, name, None)]
        if given:
            raise errors.FluidSpecError(
                f"@task.fluid {self.task_id!r}: {', '.join(given)} need(s) the kubernetes backend (they "
                f"shape the task's pod), but fluid connection {self.fluid_conn_id!r} uses the local backend, "
                "where the function runs as a local process that would not see them. Remove them for local "
                "runs (env_vars works on both backends), or use a fluid connection with backend 'kubernetes'."
            )
        ignored = [name for name in PLACEMENT_OPTIONS if getattr(self, name, None)]
        if ignored or self.data_affinity != "preferred":
            self.log.info(
                "Local backend: %s ignored (they place and build the pod on Kubernetes)",
                ", ".join([*ignored, *(["data_affinity"] if self.data_affinity != "preferred" else [])]),
            )

    def _execute_local(self, hook: Any, spec: dict[str, Any]) -> Any:
        self._check_local_options()
        namespace = self.dataset_namespace or hook.namespace(None)
        socket_path = hook.client.ipc_socket(namespace, self.dataset_name)
        from fluid_airflow.runner import local_run, warm

        env = local_run.runner_environment(
            {**os.environ, **_plain_env(self.env_vars), "VINEYARD_IPC_SOCKET": socket_path}
        )

        start = local_run.run_forked if local_run.fork_supported() else local_run.run_subprocess
        folder = hook.client.folder(namespace, self.dataset_name)
        with tempfile.TemporaryDirectory(prefix="fluid-task-") as tmp:
            output = Path(tmp) / "return.json"
            try:
                log = lambda line: self.log.info("%s", line)  # noqa: E731
                code = warm.run_warm(folder, spec, env, output, log, self._started_in("the warm runner"))
                if code is None:  # no warm runner (not started, or gone): fork this task process instead
                    code = start(spec, env, output, log, self._started_in("a fork of this task"))
            finally:
                self._local_pid = None
            if code != 0:
                raise errors.FluidAirflowError(
                    f"@task.fluid {self.task_id!r} failed in its local process (exit code {code}); "
                    "see the log above."
                )
            if not self.do_xcom_push:
                return None
            return _from_runner(json.loads(output.read_text()), bool(self.multiple_outputs))

    def _started_in(self, where: str) -> Callable[[int], None]:
        def started(pid: int) -> None:
            self._local_pid = pid
            self.log.info(
                "@task.fluid %r runs in local process %d, %s (killed with this task)",
                self.task_id,
                pid,
                where,
            )

        return started

    def on_kill(self) -> None:
        if self._local_pid is not None:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(self._local_pid, signal.SIGKILL)  # the local stand-in for deleting the pod
        super().on_kill()


def _from_runner(value: Any, multiple_outputs: bool) -> Any:
    """The runner's output as the value Airflow should push: references stay references; plain
    values, which the runner wrote in Airflow's serde form, are decoded so they are serialised once."""
    from collections import namedtuple

    from airflow.sdk.bases.xcom import BaseXCom

    from fluid_airflow.vineyard.data import tree

    def one(v: Any) -> Any:
        if tree.is_backend_row(v):
            return v
        return BaseXCom.deserialize_value(namedtuple("R", ["value"])(v))

    if multiple_outputs and isinstance(value, dict) and not tree.is_backend_row(value):
        return {k: one(v) for k, v in value.items()}
    return one(value)


class _FluidMappedOperator(DecoratedMappedOperator):
    """A mapped ``@task.fluid``: Airflow resolves the mapped arguments here, before the task is
    unmapped, so references must be kept as references here too."""

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        from fluid_airflow.vineyard.xcom import references_only

        with references_only():
            super().render_template_fields(context, jinja_env)


class _FluidTaskDecorator(_TaskDecorator):
    """``_TaskDecorator`` whose ``.expand()`` builds a :class:`_FluidMappedOperator`."""

    def _expand(self, expand_input: Any, *, strict: bool) -> Any:
        # Annotated XComArg upstream, but it returns XComArg(operator=...): a PlainXComArg (XComArg.__new__)
        output = cast("PlainXComArg", super()._expand(expand_input, strict=strict))
        output.operator.__class__ = _FluidMappedOperator  # same attrs layout: adds one method only
        return output


def _plain_env(env_vars: Any) -> dict[str, str]:
    """The task's (rendered) ``env_vars`` as a dict, for the local process (pods get them from KPO)."""
    if isinstance(env_vars, dict):
        return {str(k): str(v) for k, v in env_vars.items()}
    plain = {}
    for var in env_vars or []:
        name = var["name"] if isinstance(var, dict) else var.name
        value = var.get("value") if isinstance(var, dict) else var.value
        if value is not None:
            plain[name] = str(value)
    return plain


def _is_lazy(value: Any) -> bool:
    """A lazily resolved mapped upstream (LazyXComSequence): sent as a list of references."""
    from airflow.sdk.execution_time.lazy_sequence import LazyXComSequence

    return isinstance(value, LazyXComSequence)


def fluid_task(
    python_callable: Callable | None = None, multiple_outputs: bool | None = None, **kwargs: Any
) -> TaskDecorator:
    """``@task.fluid(dataset_name=..., image=..., ...)``: run the function next to the Dataset.

    Takes every :class:`~fluid_airflow.operators.pod.FluidPodOperator` (and so KPO) argument;
    ``dataset_name`` is required. Returns the reference of what the function returned (or a
    small JSON value), pushed as the task's XCom.
    """
    import attr

    # As airflow.sdk.bases.decorator.task_decorator_factory, with our _TaskDecorator subclass. Its
    # cast too: attr.NOTHING makes the attrs class infer multiple_outputs from the function's return
    # annotation (_infer_multiple_outputs), a default mypy's attrs plugin does not see.
    outputs = cast("bool", attr.NOTHING) if multiple_outputs is None else multiple_outputs

    def build(function: Callable) -> Any:
        return _FluidTaskDecorator(
            function=function, multiple_outputs=outputs, operator_class=_FluidDecoratedOperator, kwargs=kwargs
        )

    return build(python_callable) if python_callable is not None else build  # type: ignore[return-value]
