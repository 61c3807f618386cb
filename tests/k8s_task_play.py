"""What kwok does not run, played for a task pod on the real control plane: its ``base`` container, the
Fluid fuse that writes ``vineyard-config.yaml`` under the Dataset's PVC, cluster DNS, and a worker's network.

kwok places and completes pods but runs no container, so a test that needs the container's effect plays it
here, from what the API server holds (the pod as KubernetesPodOperator created it and the real kube-scheduler
placed it; the ConfigMap Fluid's controller made from its vineyard chart):

- :func:`play_fuse`: the fuse's loop (v6d ``docker/vineyard-fluid-fuse/entrypoint.sh`` at v0.24.2): write
  ``Vineyard: {IPCSocket: vineyard-worker.sock, RPCEndpoint: <the rpc-conf ConfigMap's value>}`` and, only on
  a node running a worker, hard-link that worker's socket next to it;
- :func:`rpc_conf` / :func:`cluster_dns`: the endpoints Fluid v1.0.8's chart lists
  (``charts/vineyard/templates/config/vineyard-rpc-conf.yaml``: ``<name>-worker-<i>.<name>-worker.<ns>:<rpc
  port>``, for every replica, in order) and the address cluster DNS gives such a name: the pod IP of pod
  ``<name>-worker-<i>`` (hostname + headless-Service subdomain). This host has no cluster DNS, so the played
  fuse writes the address in place of the name;
- :func:`tcp_relay`: a worker's RPC port on its pod IP, relayed to a real local vineyardd (vineyardd has no
  bind-address flag and would answer on every loopback address, which would make every worker alive);
- :func:`play_task_container`: the ``base`` container: a local process running the pod's own command,
  arguments and environment; container paths go to host folders standing for its volumes (anything else to
  a folder standing for the image's root filesystem). Its exit code then becomes the container's, through the
  annotation our kwok stage reads (``tests/controlplane/kwok_config.py``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from controlplane import ControlPlane
from controlplane.kwok_config import ANNOTATION_EXIT_CODE, ANNOTATION_RUN_FOR
from k8s_plane import wait_for

import fluid_airflow

RUNNER = ["python", "-m", "fluid_airflow.runner.task"]
CHECKOUT = str(Path(fluid_airflow.__file__).resolve().parents[1])  # the code under test, not the venv's copy


def rpc_conf(core: Any, namespace: str, runtime: str) -> list[str]:
    """The ``VINEYARD_RPC_ENDPOINT`` list of ConfigMap ``<runtime>-rpc-conf`` (what the fuse reads)."""
    data = core.read_namespaced_config_map(f"{runtime}-rpc-conf", namespace).data
    return [e.strip() for e in data["VINEYARD_RPC_ENDPOINT"].split(",") if e.strip()]


def cluster_dns(core: Any, endpoint: str) -> str:
    """``<pod>.<subdomain>.<ns>:<port>`` as ``<IP>:<port>``; the pod's hostname and subdomain must match."""
    host, _, port = endpoint.rpartition(":")
    name, subdomain, namespace = host.split(".")
    pod = core.read_namespaced_pod(name, namespace)
    named = (pod.spec.hostname, pod.spec.subdomain)
    assert named == (name, subdomain), f"pod {namespace}/{name} is {named}: DNS would not resolve {host}"
    assert pod.status.pod_ip, f"pod {namespace}/{name} has no IP: cluster DNS would not resolve {host}"
    return f"{pod.status.pod_ip}:{port}"


def play_fuse(folder: Path, rpc_endpoints: list[str], worker_socket: Path | None) -> Path:
    """Write what the fuse shows under the PVC on one node into ``folder``; returns the config file."""
    config = folder / "vineyard-config.yaml"
    section = {"IPCSocket": "vineyard-worker.sock", "RPCEndpoint": ",".join(rpc_endpoints)}
    config.write_text(yaml.safe_dump({"Vineyard": section}))
    if worker_socket is not None:
        os.link(worker_socket, folder / "vineyard-worker.sock")
    return config


@contextlib.contextmanager
def tcp_relay(listen: tuple[str, int], target: tuple[str, int]) -> Iterator[None]:
    """Accept on ``listen`` and relay each connection to ``target``; every connection is closed at the end."""
    server = socket.create_server(listen)
    server.settimeout(0.2)
    stop, open_sockets = threading.Event(), []

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                near, _ = server.accept()
            except TimeoutError:
                continue
            near.settimeout(None)
            far = socket.create_connection(target)
            open_sockets.extend((near, far))
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield
    finally:
        stop.set()
        acceptor.join(5)
        server.close()
        for sock in open_sockets:  # vineyardd ignores SIGTERM while a client is connected
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def task_pod(plane: ControlPlane, namespace: str, task_id: str, timeout: float = 60) -> Any:
    """The task's pod once the scheduler placed it (KPO labels it with the task id)."""
    core = plane.core_v1()
    placed = lambda: [  # noqa: E731
        p
        for p in core.list_namespaced_pod(namespace, label_selector=f"task_id={task_id}").items
        if p.spec.node_name
    ]
    (pod,) = wait_for(f"the pod of {task_id} placed", placed, timeout, plane)
    return pod


def play_task_container(plane: ControlPlane, pod: Any, volumes: dict[str, Path], rootfs: Path) -> int:
    """Run ``pod``'s ``base`` container as a local process; returns its exit code, which becomes the
    container's. ``volumes`` maps a PVC's claim name, or another volume's name, to a host folder.

    As tests/kubelet_double.py does: a leading ``python`` is this venv's interpreter and this checkout is on
    its path (they stand in for an image with fluid-airflow); the process gets the container's plain ``env``
    values, ``PATH`` and ``HOME``, not the test's environment."""
    base = next(c for c in pod.spec.containers if c.name == "base")
    assert base.command[:3] == RUNNER, base.command
    host = _path_map(pod, base, volumes, rootfs)
    argv = [
        sys.executable,
        *[host(a) if a.startswith("/") else a for a in [*base.command[1:], *(base.args or [])]],
    ]
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(rootfs / "root"),
        "PYTHONPATH": CHECKOUT,
    }
    env |= {e.name: host(e.value, inside_only=True) for e in base.env or [] if e.value is not None}
    done = subprocess.run(argv, env=env, cwd=rootfs, capture_output=True, text=True, timeout=120)
    print(f"--- played container of {pod.metadata.name}, exit code {done.returncode}:\n{done.stderr[-3000:]}")
    for folder in volumes.values():  # kwok execs the sidecar's `cat` as uid 65534
        for written in folder.glob("*.json"):
            written.chmod(0o644)
    finish_container(plane, pod, done.returncode)
    return done.returncode


def finish_container(plane: ControlPlane, pod: Any, code: int) -> None:
    """Make kwok end ``pod``'s ``base`` container now with exit code ``code`` (our stage reads both)."""
    annotations = {ANNOTATION_EXIT_CODE: str(code), ANNOTATION_RUN_FOR: "100ms"}
    plane.core_v1().patch_namespaced_pod(
        pod.metadata.name, pod.metadata.namespace, {"metadata": {"annotations": annotations}}
    )


def _path_map(pod: Any, container: Any, volumes: dict[str, Path], rootfs: Path) -> Any:
    """Container path -> host path: under a mounted volume, that volume's folder; else under ``rootfs`` (or,
    ``inside_only``, unchanged: an env value may be anything)."""
    folders = {}
    for volume in pod.spec.volumes or []:
        claim = volume.persistent_volume_claim.claim_name if volume.persistent_volume_claim else None
        if (claim or volume.name) in volumes:
            folders[volume.name] = volumes[claim or volume.name]
    mounts = [
        (m.mount_path.rstrip("/"), folders[m.name])
        for m in container.volume_mounts or []
        if m.name in folders
    ]

    def host(path: str, inside_only: bool = False) -> str:
        for mount_path, folder in mounts:
            if path == mount_path or path.startswith(mount_path + "/"):
                return str(folder / path[len(mount_path) :].lstrip("/"))
        return path if inside_only else str(rootfs / path.lstrip("/"))

    return host
