"""Run one ``@task.fluid`` callable next to the data: inside a task pod, or a local subprocess.

``python -m fluid_airflow.runner.task (--spec FILE | --spec-env VAR) [--output FILE]``

The spec (JSON, Airflow serde form) holds the function source, its arguments and the XCom
scope (DAG, run, task, map index). Arguments that are Vineyard references are resolved here,
from the Dataset's vineyardd: zero-copy over its IPC socket on a cache node, copied over RPC
elsewhere. The return value is stored here too, and only its reference (or a small JSON value)
is written to ``--output`` — in a pod, ``/airflow/xcom/return.json``, which the XCom sidecar
hands back to Airflow (cncf-kubernetes ``utils/xcom_sidecar.py``). The payload never passes
through the Airflow worker. Without ``--output`` (the task's ``do_xcom_push=False``) the return
value is discarded and nothing is stored.

Endpoint (checked first, the "preflight"): ``VINEYARD_IPC_SOCKET`` (local backend), else the
``VINEYARD_CONFIG`` file Fluid's fuse writes under the Dataset's mount (``IPCSocket``, relative
to the file, when present on this node; else ``RPCEndpoint``; docs/design.md §18).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vineyard import Client

MIN_FREE_BYTES = 16 << 20  # vineyardd must have at least this much shared memory left


class PreflightError(RuntimeError):
    """The task cannot reach the Dataset's vineyardd; says which node and what is missing."""


def _node() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


def endpoint() -> tuple[str, str]:
    """``("ipc", path)`` or ``("rpc", "host:port[,host:port...]")`` of the Dataset's vineyardd (every
    ``RPCEndpoint`` of the config, in its order: :func:`connect` tries each).

    :raises PreflightError: no socket, config file or RPC endpoint is available.
    """
    if os.environ.get("VINEYARD_IPC_SOCKET"):
        ipc_socket = os.environ["VINEYARD_IPC_SOCKET"]
        if not Path(ipc_socket).exists():
            raise PreflightError(
                f"node {_node()}: VINEYARD_IPC_SOCKET={ipc_socket} does not exist; is vineyardd running?"
            )
        return "ipc", ipc_socket
    config = os.environ.get("VINEYARD_CONFIG")
    if not config:
        raise PreflightError(
            f"node {_node()}: neither VINEYARD_IPC_SOCKET nor VINEYARD_CONFIG is set; the task does not "
            "mount the Dataset (run it with @task.fluid / FluidPodOperator and a dataset_name)."
        )
    path = Path(config)
    if not path.is_file():
        raise PreflightError(
            f"node {_node()}: the Vineyard config {path} is missing: the Dataset's PVC is not mounted "
            "there, or Fluid's fuse has not written it yet (is the Dataset Bound?)."
        )
    import yaml

    section = (yaml.safe_load(path.read_text()) or {}).get("Vineyard") or {}
    ipc = section.get("IPCSocket")
    if ipc:
        ipc_path = Path(ipc) if Path(ipc).is_absolute() else path.parent / ipc
        if ipc_path.exists():
            return "ipc", str(ipc_path)
    rpc = ",".join(e.strip() for e in str(section.get("RPCEndpoint") or "").split(",") if e.strip())
    if rpc:
        return "rpc", rpc
    raise PreflightError(
        f"node {_node()}: {path} names no usable IPCSocket ({ipc or 'none'}: not on this node) and no "
        "RPCEndpoint; the VineyardRuntime has no worker reachable from here."
    )


def _open(kind: str, where: str) -> tuple[Any, Any]:
    from fluid_airflow.hooks.vineyard import VineyardHook

    hook = VineyardHook(ipc_socket=where) if kind == "ipc" else VineyardHook(rpc_endpoint=where)
    client = hook.get_conn()
    return client, client.status


def connect(min_free: int = MIN_FREE_BYTES) -> Any:
    """Connect to the Dataset's vineyardd and check it has room.

    Over RPC, each endpoint is tried in the config's order and the first that answers is used
    (:class:`~fluid_airflow.hooks.vineyard.VineyardHook` with the whole list, as vineyard's own client
    does with ``RPCEndpoint``).

    :raises PreflightError: naming the node, every endpoint tried and why, or the missing room.
    """
    kind, endpoints = endpoint()
    try:
        client, status = _open(kind, endpoints)
    except Exception as exc:
        raise PreflightError(f"node {_node()}: {exc}") from exc
    where = endpoints if kind == "ipc" else str(client.rpc_endpoint)
    free = int(status.memory_limit) - int(status.memory_usage)
    if free < min_free:
        raise PreflightError(
            f"node {_node()}: vineyardd at {kind} {where} has {free} bytes of shared memory free "
            f"(limit {status.memory_limit}); at least {min_free} are needed. Free objects or enlarge the "
            "VineyardRuntime's cache capacity."
        )
    print(f"fluid-airflow: vineyardd {kind} {where} on node {_node()}: {free} bytes free", file=sys.stderr)
    return client


def _resolve(value: Any) -> Any:
    from collections import namedtuple

    from fluid_airflow.vineyard.data import tree
    from fluid_airflow.vineyard.xcom import VineyardXComBackend

    if tree.is_backend_row(value):
        return VineyardXComBackend.deserialize_value(namedtuple("R", ["value"])(value))
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve(v) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    return value


def run(spec: dict[str, Any], client: Client, store: bool = True) -> Any:
    """Resolve the arguments, call the function, store the result; returns the XCom value.

    :param store: False (``do_xcom_push=False``): the result is discarded and None returned, so
        no Vineyard object is made that no XCom row would ever reference (nor release).
    """
    from airflow.sdk.serde import deserialize

    from fluid_airflow.vineyard.xcom import VineyardXComBackend, use_client

    namespace: dict[str, Any] = {"__name__": "fluid_task"}
    exec(compile(spec["source"], f"<@task.fluid {spec['function']}>", "exec"), namespace)
    function = namespace[spec["function"]]
    with use_client(client):
        inputs = _resolve(deserialize(spec["inputs"]))
        result = function(*inputs["args"], **inputs["kwargs"])
        if not store:
            return None
        if spec.get("multiple_outputs") and isinstance(result, dict):
            # Stored under each key's own XCom name: Airflow then pushes each key (the reference,
            # kept as is) and the whole dict (a tree of those references, no second copy).
            return {
                k: VineyardXComBackend.serialize_value(v, key=k, **spec["scope"]) for k, v in result.items()
            }
        return VineyardXComBackend.serialize_value(result, key="return_value", **spec["scope"])


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0, or 3 when the preflight fails (message on stderr, no output file).

    Exceptions of the user's function propagate (non-zero exit, traceback in the task log).
    """
    parser = argparse.ArgumentParser(prog="python -m fluid_airflow.runner.task")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="JSON spec file")
    source.add_argument("--spec-env", help="environment variable holding the base64 JSON spec")
    parser.add_argument(
        "--output",
        help="where the XCom value (JSON) is written; without it (do_xcom_push=False) the return value is "
        "discarded: nothing is stored in Vineyard and no file is written",
    )
    args = parser.parse_args(argv)
    text = Path(args.spec).read_text() if args.spec else base64.b64decode(os.environ[args.spec_env]).decode()
    return execute(json.loads(text), Path(args.output) if args.output else None)


def execute(spec: dict[str, Any], output: Path | None) -> int:
    """Preflight, run ``spec``, write the XCom value (JSON) to ``output``; returns 0, or 3 when
    the preflight fails (message on stderr, no output file). Used by :func:`main` in a pod or a
    fresh interpreter, and in a fork of the task process by
    :func:`fluid_airflow.runner.local_run.run_forked`.

    Exceptions of the user's function propagate (non-zero exit, traceback in the task log).
    """
    try:
        client = connect(int(spec.get("min_free_bytes", MIN_FREE_BYTES)))
    except PreflightError as exc:
        dataset = spec.get("dataset") or "(unknown)"
        print(
            f"fluid-airflow preflight failed for Dataset {dataset}: {exc} Is the Dataset bound (its bind "
            "task succeeded, no cleanup ran since)?",
            file=sys.stderr,
        )
        return 3
    store = output is not None and bool(spec.get("store", True))
    value = run(spec, client, store=store)
    if not store or output is None:
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
