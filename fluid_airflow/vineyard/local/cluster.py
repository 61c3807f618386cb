"""A local Vineyard cluster: one etcd and N vineyardd instances, each standing for a cache node.

What a VineyardRuntime runs on Kubernetes (one vineyardd per cache node, metadata shared in
etcd), on one machine for development and tests: instance ``i`` keeps its socket, pid and log in
``<runtime_dir>/node<i>/`` and serves RPC on its own port; etcd keeps its data in
``<runtime_dir>/etcd/``; ``<runtime_dir>/cluster.json`` records the ports and sockets.

vineyardd has no bind-address flag, so each RPC port listens on all interfaces without
authentication (v6d ``src/server/async/rpc_server.cc`` @ v0.24.2; docs/design.md §7); use this on a
trusted machine only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluid_airflow.exceptions import VineyardDaemonError
from fluid_airflow.vineyard.local import private_dir
from fluid_airflow.vineyard.local.daemon import LocalVineyardd
from fluid_airflow.vineyard.local.etcd import LocalEtcd, free_port


@dataclass(frozen=True)
class Instance:
    """One vineyardd of the cluster: its IPC socket and RPC port (``127.0.0.1:<rpc_port>``)."""

    index: int
    socket: str
    rpc_port: int
    pid: int | None


class LocalVineyardCluster:
    """Start, stop and describe one etcd plus ``instances`` vineyardd in ``runtime_dir``.

    :param runtime_dir: the cluster's folder (short: sockets must fit in 107 bytes).
    :param instances: how many vineyardd (cache nodes); ignored when ``cluster.json`` exists.
    """

    def __init__(self, runtime_dir: str | os.PathLike[str], instances: int = 3) -> None:
        self.runtime_dir = Path(runtime_dir).expanduser().absolute()
        self.state_file = self.runtime_dir / "cluster.json"
        state = self._state()
        if instances < 1 and not state:
            raise VineyardDaemonError(f"a cluster needs at least 1 vineyardd instance, not {instances}")
        count = len(state["rpc_ports"]) if state else instances
        self.etcd = LocalEtcd(
            self.runtime_dir / "etcd",
            client_port=state.get("etcd_client_port", 0),
            peer_port=state.get("etcd_peer_port", 0),
        )
        self.nodes = [LocalVineyardd(self.runtime_dir / f"node{i}") for i in range(count)]
        self.rpc_ports = state.get("rpc_ports") or [free_port() for _ in range(count)]

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def start(self, size: str = "256Mi", timeout: float = 30.0) -> list[Instance]:
        """Start etcd, then every vineyardd (``--meta etcd``, RPC on its port), each ``size`` big.

        On a cluster that already runs, only the instances that are not running are started (the
        recovery of a dead instance); nothing running is touched. What this call started is
        stopped again when a later start fails.

        :raises SocketInUseError: every instance and etcd already run.
        :raises InsufficientMemoryError: the instances to start together need more memory than there is.
        :raises VineyardDaemonError: as :meth:`LocalVineyardd.start` / :meth:`LocalEtcd.start`.
        """
        from fluid_airflow.exceptions import SocketInUseError
        from fluid_airflow.vineyard.local.resources import check_memory, memory_limits, parse_size

        missing = [(n, p) for n, p in zip(self.nodes, self.rpc_ports, strict=True) if not n.pid()]
        if self.etcd.pid is not None and not missing:
            raise SocketInUseError(
                f"the cluster in {self.runtime_dir} already runs (etcd pid {self.etcd.pid}, "
                f"{len(self.nodes)} vineyardd); stop it first: "
                f"`fluid-airflow cluster stop --runtime-dir {self.runtime_dir}`"
            )
        check_memory(parse_size(size) * len(missing), memory_limits(), f"{len(missing)} x {size}")
        private_dir.ensure(self.runtime_dir)
        started: list[Any] = []
        try:
            if self.etcd.pid is None:
                self.etcd.start(timeout=timeout)
                started.append(self.etcd)
            state = {
                "etcd_client_port": self.etcd.client_port,
                "etcd_peer_port": self.etcd.peer_port,
                "rpc_ports": self.rpc_ports,
            }
            self.state_file.write_text(json.dumps(state) + "\n")
            for node, port in missing:
                endpoint = self.etcd.endpoint
                node.start(
                    size, rpc_port=port, allow_public_rpc=True, etcd_endpoint=endpoint, timeout=timeout
                )
                started.append(node)
        except BaseException:
            for thing in reversed(started):  # only what this call started
                thing.stop()
            raise
        return self.instances()

    def instances(self) -> list[Instance]:
        """The vineyardd instances, in start order."""
        return [
            Instance(index=i, socket=str(node.socket_path), rpc_port=port, pid=node.pid())
            for i, (node, port) in enumerate(zip(self.nodes, self.rpc_ports, strict=True))
        ]

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop every vineyardd, then etcd; returns False when nothing was running."""
        from fluid_airflow.hooks.vineyard import close_clients

        stopped = False
        for node in self.nodes:
            close_clients(str(node.socket_path))  # vineyardd ignores SIGTERM while we are connected
            stopped |= node.stop(timeout=timeout)
        stopped |= self.etcd.stop(timeout=timeout)
        self.state_file.unlink(missing_ok=True)
        return stopped
