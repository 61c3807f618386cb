"""VineyardHook: one Vineyard client per process, from a ``vineyard`` connection or a socket.

Connection fields (declared in the provider info as ``conn-fields``): ``ipc_socket`` (path of
vineyardd's UNIX socket; zero-copy, same node), ``rpc_endpoint`` (``host:port``, or several
comma-separated, tried in order; copies data over TCP), or ``dataset`` (``<namespace>/<name>``:
that Fluid Dataset's worker vineyardds over RPC, their endpoints read from Kubernetes through the
``fluid`` connection ``fluid_conn_id``, default ``fluid_default``). The first of these that is set
wins. Nothing connects at import or construction: the first :meth:`VineyardHook.get_conn` does, so
DAG parsing never touches Vineyard.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

# Module import, not names: Airflow may load this module while fluid_airflow.exceptions is
# still initialising (it imports airflow, whose config loads the XCom backend).
from fluid_airflow import exceptions as errors
from fluid_airflow.vineyard.client import arrow_stream, calls

if TYPE_CHECKING:
    from vineyard import Client

# Clients by (pid, endpoint). A forked child must not use its parent's client (the socket and
# the client's state belong to the parent), so entries of another pid are ignored and replaced.
_CLIENTS: dict[tuple[int, str], Any] = {}
_LOCK = threading.Lock()
#: Seconds a Dataset's published RPC endpoints are reused in this process before its ConfigMap is read again.
ENDPOINTS_TTL = 60.0
# (vineyard conn, dataset, fluid conn) -> (when read, endpoints)
_endpoints: dict[tuple[str, str, str], tuple[float, list[str]]] = {}
# IPC socket -> pid of the process that connected to it through vineyard's own client cache.
# Copied into forked children, where it tells _ipc_connect that the cache entry is the parent's.
_IPC_CACHED_BY: dict[str, int] = {}


class VineyardHook(BaseHook):
    """Connect to vineyardd and hand out its Python client.

    :param vineyard_conn_id: Airflow connection of type ``vineyard``. Ignored when
        ``ipc_socket`` or ``rpc_endpoint`` is given.
    :param ipc_socket: path of vineyardd's IPC socket (overrides the connection).
    :param rpc_endpoint: ``host:port`` of vineyardd's RPC service, or several comma-separated (the first
        that answers is used), overriding the connection.
    :param timeout: seconds one call may wait for vineyardd's answer (connect handshake included);
        default ``[fluid] vineyard_timeout``. See :mod:`fluid_airflow.vineyard.client.calls` for why the
        handshake is probed first.
    """

    conn_name_attr = "vineyard_conn_id"
    default_conn_name = "vineyard_default"
    conn_type = "vineyard"
    hook_name = "Vineyard"

    def __init__(
        self,
        vineyard_conn_id: str = default_conn_name,
        *,
        ipc_socket: str | None = None,
        rpc_endpoint: str | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.vineyard_conn_id = vineyard_conn_id
        self._ipc_socket = ipc_socket
        self._rpc_endpoint = rpc_endpoint
        self._timeout = timeout

    @property
    def timeout(self) -> float:
        """Seconds one call may wait for vineyardd (``[fluid] vineyard_timeout`` by default)."""
        if self._timeout is None:
            from fluid_airflow import config

            self._timeout = config.get_seconds("vineyard_timeout")
        return self._timeout

    def endpoint(self) -> tuple[str, str]:
        """Return ``("ipc", socket_path)`` or ``("rpc", "host:port[,host:port...]")``.

        A connection's ``ipc_socket`` is used when that file exists here, or when the connection names
        nothing else; otherwise its ``rpc_endpoint``, else its ``dataset``'s published endpoints. So one
        connection serves both a worker pod on a cache node (zero-copy) and the scheduler or API server
        (over RPC), as Fluid's own vineyard config does with ``IPCSocket`` and ``RPCEndpoint``.

        :raises VineyardConnectionError: the connection names none, or its Dataset's endpoints cannot
            be found (see :meth:`_published_endpoints`).
        """
        if self._ipc_socket:
            return "ipc", self._ipc_socket
        if self._rpc_endpoint:
            return "rpc", self._rpc_endpoint
        try:
            conn = self.get_connection(self.vineyard_conn_id)
        except AirflowNotFoundException as exc:  # core's airflow.exceptions re-exports the SDK's class
            raise errors.VineyardConnectionError(
                f"Airflow connection {self.vineyard_conn_id!r} (type vineyard) is not defined. Create it "
                "(UI: Admin > Connections; or AIRFLOW_CONN_<ID> as JSON with extra.ipc_socket), or unset "
                "[fluid] vineyard_conn_id to use [fluid] vineyard_socket."
            ) from exc
        extra = conn.extra_dejson
        other = extra.get("rpc_endpoint") or extra.get("dataset") or (conn.host and conn.port)
        if extra.get("ipc_socket") and (not other or _exists(str(extra["ipc_socket"]))):
            return "ipc", str(extra["ipc_socket"])
        if extra.get("rpc_endpoint"):
            return "rpc", str(extra["rpc_endpoint"])
        if extra.get("dataset"):
            return "rpc", ",".join(self._dataset_endpoints(str(extra["dataset"]), extra))
        if conn.host and conn.port:
            return "rpc", f"{conn.host}:{conn.port}"
        raise errors.VineyardConnectionError(
            f"Airflow connection {self.vineyard_conn_id!r} names no Vineyard endpoint: set its "
            "'ipc_socket' (e.g. /var/run/vineyard/vineyard-worker.sock), 'rpc_endpoint' (host:port) or "
            "'dataset' (<namespace>/<name> of a Fluid Dataset)."
        )

    def _dataset_endpoints(self, dataset: str, extra: dict[str, Any]) -> list[str]:
        """:meth:`_published_endpoints`, asked at most once per :data:`ENDPOINTS_TTL` seconds per process:
        the backend makes a new hook for every call, and each would otherwise read the ConfigMap again."""
        key = (self.vineyard_conn_id, dataset, str(extra.get("fluid_conn_id") or ""))
        with _LOCK:
            cached = _endpoints.get(key)
        if cached is not None and time.monotonic() - cached[0] < ENDPOINTS_TTL:
            return cached[1]
        found = self._published_endpoints(dataset, extra)
        with _LOCK:
            _endpoints[key] = (time.monotonic(), found)
        return found

    def _published_endpoints(self, dataset: str, extra: dict[str, Any]) -> list[str]:
        """The RPC endpoints Fluid publishes for ``dataset`` (``<namespace>/<name>``), asked through the
        hook of the ``fluid`` connection ``extra["fluid_conn_id"]`` (``FluidHook.rpc_endpoints``).

        That hook is found by Airflow's connection registry (``Connection.get_hook``, by connection
        type: airflow/sdk/definitions/connection.py, apache-airflow-task-sdk 1.3.2), so this layer
        does not import the control plane (docs/architecture.md).

        :raises VineyardConnectionError: ``dataset`` is not ``<namespace>/<name>``, the fluid connection
            is missing or of another type, or the lookup failed (its error says why).
        """
        namespace, _, name = dataset.partition("/")
        fluid_conn_id = str(extra.get("fluid_conn_id") or "fluid_default")
        what = f"Airflow connection {self.vineyard_conn_id!r} (dataset {dataset!r})"
        if not namespace or not name or "/" in name:
            raise errors.VineyardConnectionError(
                f"{what}: 'dataset' must be <namespace>/<name> of a Fluid Dataset, e.g. airflow/airflow-xcom."
            )
        try:
            hook = self.get_connection(fluid_conn_id).get_hook()
        except AirflowNotFoundException as exc:
            raise errors.VineyardConnectionError(
                f"{what}: its fluid connection {fluid_conn_id!r} is not defined. Create it (type fluid, "
                "e.g. extra {\"in_cluster\": true}) or set the vineyard connection's 'fluid_conn_id'."
            ) from exc
        lookup = getattr(hook, "rpc_endpoints", None)
        if lookup is None:
            raise errors.VineyardConnectionError(
                f"{what}: connection {fluid_conn_id!r} is a {type(hook).__name__}, not of type fluid; point "
                "'fluid_conn_id' at a fluid connection."
            )
        try:
            return list(lookup(namespace, name))
        except errors.FluidAirflowError as exc:
            raise errors.VineyardConnectionError(
                f"{what}: cannot find the RPC endpoints of Dataset {dataset}'s vineyardd: {exc}"
            ) from exc

    def get_conn(self) -> Any:
        """Return this process's ``vineyard.Client`` for the endpoint, connecting on first use.

        A client made before ``fork()`` is never reused in the child, and a client whose
        vineyardd went away is replaced. The client's ``timeout_seconds`` is set to
        :attr:`timeout`, so no later call on it waits longer than that for an answer.

        :raises VineyardConnectionError: the socket file is missing or not permitted, or vineyardd
            refuses (about 1 s with the IPC retry loop disabled, instead of 10 s).
        :raises VineyardTimeoutError: vineyardd accepts but does not answer within :attr:`timeout`.
        """
        kind, where = self.endpoint()
        key = (os.getpid(), f"{kind}:{where}")
        with _LOCK:
            client = _CLIENTS.get(key)
            if client is not None:
                # Shared by every hook of this process: each caller's own bound applies to its calls.
                client.timeout_seconds = max(1, round(self.timeout))
                if _alive(client):
                    return client
            for stale in [k for k in _CLIENTS if k[0] != key[0]]:
                # Dropped without close(): closing would act on the parent's connection state.
                del _CLIENTS[stale]
            client = _connect(kind, where, self.timeout)
            client.timeout_seconds = max(1, round(self.timeout))  # vineyard takes whole seconds
            _CLIENTS[key] = client
            return client

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's "Test" button: connect and report the instance and its memory use."""
        try:
            status = self.get_conn().status
        except Exception as exc:
            return False, str(exc)
        return True, (
            f"vineyardd instance {status.instance_id}: {status.memory_usage} of "
            f"{status.memory_limit} bytes used"
        )


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # e.g. a folder on the path closed to this user: not usable from here
        return False


def _alive(client: Client) -> bool:
    """One round trip (~0.1 ms): a restarted vineyardd leaves clients that still say connected
    but fail their next call with a broken pipe (docs/design.md §11). Bounded by the client's
    ``timeout_seconds``."""
    try:
        return bool(client.connected) and client.status is not None
    except Exception:
        return False


def _connect(kind: str, where: str, timeout: float) -> Any:
    # Without this, a missing socket costs 10 s of silent retries (docs/design.md §4).
    os.environ.setdefault("VINEYARD_IPC_SKIP_RETRY", "1")
    import vineyard

    arrow_stream.register_resolver()  # client.get of our table objects, also by users' own code

    if kind == "ipc":
        try:
            present = Path(where).exists()
        except PermissionError as exc:
            raise errors.VineyardConnectionError(
                f"Not permitted to reach vineyardd's IPC socket {where} ({exc}): a folder on its path is "
                "closed to this user. Run the task as a user who may enter that folder and use the "
                "socket, or start vineyardd with its socket in a folder this user can reach."
            ) from exc
        if present and not stat.S_ISSOCK(os.stat(where).st_mode):
            raise errors.VineyardConnectionError(
                f"{where} is not a UNIX socket (it is a {'folder' if os.path.isdir(where) else 'file'}): "
                "point [fluid] vineyard_socket (or the vineyard connection's ipc_socket) at vineyardd's "
                "socket, e.g. <runtime_dir>/vineyard.sock from `fluid-airflow vineyard status`."
            )
        if not present:
            raise errors.VineyardConnectionError(
                f"No vineyardd IPC socket at {where}: the file does not exist. Start a local one with "
                "`fluid-airflow vineyard start`, or point [fluid] vineyard_socket (or the vineyard "
                "connection's ipc_socket) at a running vineyardd."
            )
        calls.probe(kind, where, timeout)
        try:
            return _ipc_connect(vineyard, where)
        except Exception as exc:
            raise errors.VineyardConnectionError(
                f"vineyardd at IPC socket {where} does not answer ({type(exc).__name__}: {exc}). "
                "It may have died and left its socket file behind; restart it "
                "(`fluid-airflow vineyard start` removes a stale socket)."
            ) from exc
    return _rpc_connect(vineyard, where, timeout)


def _rpc_connect(vineyard: Any, endpoints: str, timeout: float) -> Any:
    """A client of the first of the comma-separated ``endpoints`` that answers, tried in order as
    vineyard's own client tries ``RPCEndpoint`` (v6d ``python/vineyard/core/client.py`` @ v0.24.2,
    ``Client.__init__``: ``for host, port in zip(hosts, ports): try _connect ... continue``).

    :raises VineyardConnectionError: none answers (each endpoint and its cause named).
    """
    candidates = [e.strip() for e in endpoints.split(",") if e.strip()]
    failures: list[errors.VineyardConnectionError] = []
    for where in candidates:
        try:
            return _rpc_connect_one(vineyard, where, timeout)
        except errors.VineyardConnectionError as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    tried = "; ".join(f"rpc {where}: {exc}" for where, exc in zip(candidates, failures, strict=True))
    raise errors.VineyardConnectionError(
        f"vineyardd does not answer at {tried or 'no endpoint (empty list)'}. Check that the vineyardd "
        "workers run (a Dataset's: kubectl get pods -l role=vineyard-worker) and that this host may reach "
        "their RPC port (deploy/networkpolicy.yaml)."
    )


def _rpc_connect_one(vineyard: Any, where: str, timeout: float) -> Any:
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise errors.VineyardConnectionError(f"RPC endpoint {where!r} is not host:port")
    calls.probe("rpc", where, timeout)
    try:
        with _stdout_to_stderr():
            return vineyard.connect(host, int(port))
    except Exception as exc:
        raise errors.VineyardConnectionError(
            f"vineyardd RPC endpoint {where} does not answer ({type(exc).__name__}: {exc}). "
            "Check that vineyardd runs with RPC enabled and the port is reachable."
        ) from exc


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to 2 for the block: vineyard's RPC connect prints "No RDMA endpoint
    provided. Fall back to TCP." on the C++ stdout (vineyard 0.24.2, measured), which would break
    output meant for a program (``fluid-airflow gc --json``). Called under ``_LOCK``."""
    with contextlib.suppress(Exception):  # no or a closed sys.stdout: nothing of ours to flush
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # descriptor 1 closed (a daemon): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _ipc_connect(vineyard: Any, where: str) -> Any:
    """``vineyard.connect(where)`` on a connection of this process's own, also in a forked child.

    vineyard's binding keeps one IPC client per socket path per process
    (v6d ``python/client.cc`` @ v0.24.2: ``_connect`` returns
    ``ClientManager<Client>::GetManager()->Connect(socket, ...)``), and a forked child inherits
    that cache: ``vineyard.connect`` would hand the child its parent's connection, and requests
    from both on one connection break the parent's client ("GetBuffers: the fd set is not
    matched between client and server", measured with 0.24.2). In a child, the inherited
    client's ``fork()`` (the same binding: a new connection to the same socket, nothing sent
    on the old one) is used instead, wrapped in ``vineyard.Client`` as usual. Do not ``close()``
    such a client in the child: the binding's close disconnects the cached (parent's) one.
    """
    import vineyard.core.client as client_module

    pid = os.getpid()
    if _IPC_CACHED_BY.setdefault(where, pid) == pid:
        return vineyard.connect(where)
    cached = client_module._connect

    def fresh(socket: Any, *args: Any, **kwargs: Any) -> Any:
        made = cached(socket, *args, **kwargs)
        return made.fork() if socket == where and not args else made

    client_module._connect = fresh  # only for this call, under _LOCK (get_conn holds it)
    try:
        return vineyard.connect(where)
    finally:
        client_module._connect = cached


def close_clients(ipc_socket: str) -> None:
    """Close and forget this process's clients of the vineyardd at ``ipc_socket``.

    Call before stopping that vineyardd: it ignores SIGTERM while a client is connected
    (measured with vineyard 0.24.2), so a stop would wait for its SIGKILL fallback.
    """
    with _LOCK:
        client = _CLIENTS.pop((os.getpid(), f"ipc:{ipc_socket}"), None)
        if client is not None:
            with contextlib.suppress(Exception):  # already disconnected: nothing to close
                client.close()


def reset_clients() -> None:
    """Forget every cached client (tests, and after a vineyardd restart)."""
    with _LOCK:
        _CLIENTS.clear()
