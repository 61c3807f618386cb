"""Bounded calls to vineyardd: a handshake probe with a deadline, and named connection errors.

Why this exists (measured with vineyard 0.24.2): ``vineyard.connect`` to a vineyardd that is
alive but not answering (stopped, deadlocked, or blocked on its metadata store) waits the
client's default ``timeout_seconds`` of 300 s *while holding the GIL*, so neither a watchdog
thread nor ``SIGALRM`` can interrupt it, and the timeout can only be set after the handshake.
Every later call waits at most ``Client.timeout_seconds`` and then raises
``IOErrorException: epoll_wait timeout``. So: probe the handshake ourselves with a socket
timeout, then set ``timeout_seconds`` on the client, and map Vineyard's connection exceptions
to :class:`~fluid_airflow.exceptions.VineyardConnectionError` /
:class:`~fluid_airflow.exceptions.VineyardTimeoutError` that say what to do.

The probe speaks just enough of vineyardd's IPC/RPC framing (an 8-byte little-endian length,
then JSON; ``register_request`` / ``register_reply`` / ``exit_request``, v6d
``src/common/util/protocols.cc`` @ v0.24.2; docs/design.md §4, §5) to see that the daemon
answers; the real connection is still made by ``vineyard.connect``. The tests run the probe
against a real vineyardd, so a change of framing in a future vineyard fails them rather than
hiding.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fluid_airflow import exceptions as errors

if TYPE_CHECKING:
    from vineyard import Client

_LENGTH = struct.Struct("<Q")

# list_names and list_metadatas return 5 results unless told (v6d python/vineyard/core/client.py
# ``Client.list_names`` / ``list_metadatas``, ``limit: int = 5`` @ v0.24.2; docs/design.md §3), so
# every listing passes this instead: the one listing limit of the provider.
LIST_LIMIT = 1_000_000


def probe(kind: str, where: str, timeout: float) -> None:
    """Check within ``timeout`` seconds that the vineyardd at ``where`` answers a handshake.

    :param kind: ``"ipc"`` (``where`` is a UNIX socket path) or ``"rpc"`` (``host:port``).
    :raises VineyardTimeoutError: no answer within ``timeout`` seconds (hung vineyardd).
    :raises VineyardConnectionError: refused, not permitted, or an answer that is not a
        register reply.
    """
    import vineyard

    request = json.dumps({"type": "register_request", "version": vineyard.__version__}).encode()
    family = socket.AF_UNIX if kind == "ipc" else socket.AF_INET
    address: Any = where
    if kind == "rpc":
        host, _, port = where.rpartition(":")
        address = (host, int(port))
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(_LENGTH.pack(len(request)) + request)
            (length,) = _LENGTH.unpack(_read(sock, _LENGTH.size))
            reply = json.loads(_read(sock, length))
            exit_request = json.dumps({"type": "exit_request"}).encode()
            sock.sendall(_LENGTH.pack(len(exit_request)) + exit_request)
    except TimeoutError as exc:
        raise errors.VineyardTimeoutError(
            f"vineyardd at {kind} {where} accepted the connection but did not answer its handshake "
            f"within {timeout:g} s: it is hung (stopped, deadlocked, or waiting for its metadata "
            "store etcd). Check it with `fluid-airflow vineyard status` (or the Dataset's cache "
            "pods), then restart it; retry the task once it answers. Raise [fluid] "
            "vineyard_timeout if it is only slow."
        ) from exc
    except PermissionError as exc:
        raise errors.VineyardConnectionError(
            f"Not permitted to connect to vineyardd's IPC socket {where} ({exc}). Run the task as a "
            "user who may read and write that socket (its owner or group), or start vineyardd as "
            "this user."
        ) from exc
    except (OSError, ValueError) as exc:
        fix = (
            "It may have died and left its socket file behind; restart it (`fluid-airflow vineyard "
            "start` removes a stale socket)."
            if kind == "ipc"
            else "Check that vineyardd runs with RPC enabled and the port is reachable."
        )
        raise errors.VineyardConnectionError(
            f"vineyardd at {kind} {where} does not answer ({type(exc).__name__}: {exc}). {fix}"
        ) from exc
    if reply.get("type") != "register_reply":
        raise errors.VineyardConnectionError(
            f"The server at {kind} {where} is not a vineyardd that accepts this client "
            f"(vineyard {vineyard.__version__}): it answered {str(reply)[:200]}."
        )


def _read(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionResetError("vineyardd closed the connection during the handshake")
        chunks += chunk
    return bytes(chunks)


def is_connection_failure(exc: BaseException) -> bool:
    """True for Vineyard's errors of a broken, refused or timed-out connection."""
    import vineyard

    return isinstance(
        exc,
        (
            vineyard.IOErrorException,
            vineyard.ConnectionErrorException,
            vineyard.ConnectionFailedException,
            vineyard.EtcdErrorException,
            ConnectionError,
        ),
    )


def connected_instance(client: Client) -> int:
    """Id of the vineyardd instance ``client`` talks to.

    An RPC client's ``instance_id`` is vineyard's ``UnspecifiedInstanceID`` (2**64 - 2), not the
    server's; ``remote_instance_id`` is the server's (v6d ``python/client.cc`` @ v0.24.2, measured).
    """
    return int(client.instance_id if client.is_ipc else client.remote_instance_id)


def describe(client: Client) -> str:
    """``ipc <socket>`` or ``rpc <host:port>`` of a connected client, for messages (no IPC)."""
    try:
        return f"ipc {client.ipc_socket}" if client.is_ipc else f"rpc {client.rpc_endpoint}"
    except Exception:  # a client that is already closed
        return "its endpoint"


@contextlib.contextmanager
def guarded(client: Client, action: str) -> Iterator[None]:
    """Turn a Vineyard connection failure inside the block into a named, retryable error.

    :param client: the ``vineyard.Client`` the block uses (its endpoint and ``timeout_seconds``
        go into the message).
    :param action: what the block does, e.g. ``"storing XCom 'return_value' of task 'load'"``.
    :raises VineyardTimeoutError: a call waited ``timeout`` seconds for vineyardd.
    :raises VineyardConnectionError: the connection broke (vineyardd died or restarted).
    """
    started = time.monotonic()
    try:
        yield
    except errors.FluidAirflowError:
        raise
    except Exception as exc:
        if not is_connection_failure(exc):
            raise
        try:
            timeout = float(client.timeout_seconds)
        except Exception:
            timeout = float("nan")
        raise connection_error(describe(client), action, timeout, exc, time.monotonic() - started) from exc


def connection_error(
    endpoint: str, action: str, timeout: float, exc: BaseException, waited: float
) -> errors.VineyardConnectionError:
    """The named error for a connection failure ``exc`` while doing ``action``.

    :param timeout: the client's ``timeout_seconds``.
    :param waited: seconds the failing block ran. vineyard raises the same ``IOErrorException`` for a
        call that timed out and for a broken connection (both ``Status::IOError``); a block that failed
        after waiting the client's whole timeout is taken for a timeout (a broken connection fails at
        once).
    """
    import vineyard

    cause = f"{type(exc).__name__}: {str(exc)[:200]}"
    if isinstance(exc, vineyard.EtcdErrorException):
        return errors.VineyardConnectionError(
            f"vineyardd at {endpoint} cannot reach its metadata store (etcd) while {action} ({cause}). "
            "Nothing was recorded for this call. Bring etcd back, then restart vineyardd: it does not "
            "re-register with a restarted etcd (v6d issue #2034), and its objects are lost with the "
            "restart, so clear the run from their producers."
        )
    if waited >= timeout * 0.95:  # vineyard's timer may fire a little early
        return errors.VineyardTimeoutError(
            f"vineyardd at {endpoint} did not answer within {timeout:g} s while {action} ({cause}). "
            "It is hung, or waiting for its metadata store (etcd) to answer. Nothing was recorded "
            "for this call; retry the task once vineyardd answers (`fluid-airflow vineyard status`). "
            "If etcd was down, restart vineyardd once etcd is back: it does not re-register with a "
            "restarted etcd (v6d issue #2034), and its objects are lost with the restart. Raise "
            "[fluid] vineyard_timeout if vineyardd is only slow."
        )
    return errors.VineyardConnectionError(
        f"The connection to vineyardd at {endpoint} broke while {action} ({cause}): vineyardd "
        "died or restarted. Nothing was recorded for this call. Start vineyardd again and retry the "
        "task; values stored before the restart are lost, so clear the run from their producers."
    )
