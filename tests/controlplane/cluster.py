"""A real Kubernetes control plane for the tests, with Fluid's own controllers, on loopback ports.

Pieces (built by scripts/controlplane/build.sh into the cache folder it prints with ``--print-dir``): etcd,
kube-apiserver (RBAC, bound to 127.0.0.1), kube-controller-manager, kube-scheduler (k8s.io/kubernetes), kwok
as every kubelet (sigs.k8s.io/kwok), and Fluid's ``dataset-controller`` and ``vineyardruntime-controller``
(github.com/fluid-cloudnative/fluid) out of cluster, calling helm as ``ddc-helm`` (Fluid
``pkg/utils/helm/utils.go`` looks it up on PATH at each call) with charts from ``$HOME/charts``
(``pkg/utils/charts.go``).

Exec confinement: kwok runs ``kubectl exec`` commands on this host (``pkg/kwok/server/debugging_exec.go``).
kwok is started inside a fresh PID and mount namespace (``unshare --pid --fork --kill-child --mount-proc``),
and every exec runs as uid/gid 65534 (kwok's ClusterExec ``securityContext``, ``pkg/utils/exec/cmd_other.go``
``setUser``). So an exec'd ``kill -s SIGINT 1`` (KPO's xcom sidecar stop, cncf-kubernetes 10.25
``utils/pod_manager.py``) reaches kwok as PID 1 of that namespace and is refused (EPERM, another user); host
processes are not even visible (``/proc`` is the namespace's own), and root-owned files cannot be written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes import client, config

from .kwok_config import write_kwok_config
from .pki import Pki, make_pki
from .procs import ControlPlaneError, Daemon, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "controlplane" / "build.sh"
START_TIMEOUT = 90.0


def ensure_built() -> Path:
    """Run the (idempotent) build and return its cache folder.

    :raises ControlPlaneError: the build failed; the message holds its output.
    """
    run = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True)
    if run.returncode != 0:
        raise ControlPlaneError(
            f"{BUILD} failed ({run.returncode}); fix and run `make controlplane`:\n"
            f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        )
    root = subprocess.run(["bash", str(BUILD), "--print-dir"], capture_output=True, text=True, check=True)
    return Path(root.stdout.strip())


def write_kubeconfig(path: Path, server: str, ca: Path, user: dict) -> Path:
    """Write a one-context kubeconfig for ``server`` (https URL), trusting ``ca``, as ``user`` (kubeconfig
    user fields: ``client-certificate``/``client-key`` or ``token``)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


class ControlPlane:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok + Fluid's two controllers.

    ``start()`` takes ~20-40 s warm; ``stop()`` ends every process by id and removes the temporary folder.
    ``admin_kubeconfig`` is cluster-admin (O=system:masters). Use ``create_node`` for kwok nodes and
    ``service_account_kubeconfig`` for a least-privilege identity.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or ensure_built()
        self.bin = self.root / "bin"
        self.dir = Path(tempfile.mkdtemp(prefix="fa-cp-"))
        self.daemons: list[Daemon] = []
        self.pki: Pki = make_pki(self.dir / "pki")
        self.api_port = free_port()
        self.kwok_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        self.admin_kubeconfig = write_kubeconfig(
            self.dir / "admin.kubeconfig",
            self.server,
            self.pki.ca_cert,
            {"client-certificate": str(self.pki.admin_cert), "client-key": str(self.pki.admin_key)},
        )
        self.exec_dir = self.dir / "exec"
        self.logs_file = self.dir / "pod.log"
        self.start_seconds = 0.0
        self._nodes = 0

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        """Start every daemon and wait until each is ready; on any failure stop what started and re-raise."""
        t0 = time.monotonic()
        try:
            self._start_core()
            self._start_kubelets()
            self._start_fluid()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop every daemon by process id (reverse start order), then remove the temporary folder. With
        ``FLUID_AIRFLOW_CP_LOGS=<folder>`` set, the daemons' logs are copied there first (to read after a
        failure: kube-controller-manager's node lifecycle, the Fluid controllers' reconciles)."""
        for daemon in reversed(self.daemons):
            daemon.stop()
        self.daemons.clear()
        keep = os.environ.get("FLUID_AIRFLOW_CP_LOGS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for log in self.dir.glob("*.log"):
                shutil.copy2(log, Path(keep) / log.name)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _daemon(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(name, argv, self.dir / f"{name}.log", env).start()
        self.daemons.append(daemon)
        return daemon

    def _start_core(self) -> None:
        b, p = self.bin, self.pki
        client_port, peer_port = free_port(), free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        etcd = self._daemon(
            "etcd",
            [
                str(b / "etcd"),
                "--name=cp",
                f"--data-dir={self.dir / 'etcd'}",
                "--unsafe-no-fsync",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=cp={peer_url}",
                "--log-level=warn",
            ],
        )
        wait_until("etcd", lambda: _http_ok(f"{etcd_url}/health"), 30, [etcd])
        api = self._daemon("kube-apiserver", self._apiserver_argv(etcd_url))
        wait_until("kube-apiserver /readyz", self._api_ready, START_TIMEOUT, [etcd, api])
        kc = str(self.admin_kubeconfig)
        common = [f"--kubeconfig={kc}", "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0"]
        kcm = self._daemon(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                *common,
                f"--root-ca-file={p.ca_cert}",
                f"--service-account-private-key-file={p.sa_key}",
                "--use-service-account-credentials=false",
            ],
        )
        sched = self._daemon("kube-scheduler", [str(b / "kube-scheduler"), *common])
        wait_until("default ServiceAccount", self._default_sa_exists, START_TIMEOUT, [api, kcm, sched])

    def _apiserver_argv(self, etcd_url: str) -> list[str]:
        b, p = self.bin, self.pki
        return [
            str(b / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.dir / 'apiserver'}",
            f"--tls-cert-file={p.serving_cert}",
            f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            f"--kubelet-client-certificate={p.admin_cert}",
            f"--kubelet-client-key={p.admin_key}",
            # Exec/logs go to kwok through each Node's Hostname address "localhost" (kwok's --node-name);
            # InternalIPs are distinct per-node loopback addresses where nothing listens (objects.py).
            "--kubelet-preferred-address-types=Hostname,InternalIP",
            "--profiling=false",
        ]

    def _start_kubelets(self) -> None:
        # Execs run as uid 65534: let it traverse (not list) our 0700 temp folder to reach its working folder.
        self.dir.chmod(0o711)
        self.exec_dir.mkdir()
        self.exec_dir.chmod(0o755)
        self.logs_file.write_text("2026-01-01T00:00:00Z stdout F kwok: no log for this container\n")
        kwok_home = self.dir / "kwok-home"
        kwok_home.mkdir()
        cfg = write_kwok_config(
            self.root / "kwok" / "stage", self.dir / "kwok.yaml", self.exec_dir, self.logs_file
        )
        kwok = self._daemon(
            "kwok",
            [
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                str(self.bin / "kwok"),
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--config={cfg}",
                "--manage-all-nodes=true",
                # Without a KwokConfiguration document its default (40) is never applied, leases are off
                # (``initNodeLeaseController`` in ``pkg/kwok/controllers/controller.go``) and the only
                # heartbeat is the 10-20 min node stage: every ~55 s kube-controller-manager found all
                # nodes not-Ready and marked their Running pods not Ready, which no pod stage undoes.
                "--node-lease-duration-seconds=40",
                "--node-ip=127.0.0.1",
                "--node-name=localhost",
                f"--node-port={self.kwok_port}",
                f"--server-address=127.0.0.1:{self.kwok_port}",
                f"--tls-cert-file={self.pki.serving_cert}",
                f"--tls-private-key-file={self.pki.serving_key}",
            ],
            env={**_base_env(), "HOME": str(kwok_home)},
        )
        wait_until(
            "kwok /healthz", lambda: _https_ok(f"https://127.0.0.1:{self.kwok_port}/healthz"), 30, [kwok]
        )
        self.apply_fluid_crds()

    def _start_fluid(self) -> None:
        home = self.dir / "fluid-home"
        home.mkdir()
        (home / "charts").symlink_to(self.root / "charts")
        # Fluid writes each runtime's Helm values to os.TempDir() and leaves them
        # (pkg/ddc/vineyard/master_internal.go, os.CreateTemp): keep them in the plane's folder.
        (home / "tmp").mkdir()
        env = {
            **_base_env(),
            "TMPDIR": str(home / "tmp"),
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(home),
            "KUBECONFIG": str(self.admin_kubeconfig),
            "HELM_DRIVER": "configmap",
            "MOUNT_ROOT": "/runtime-mnt",
            "HELM_CACHE_HOME": str(home / ".cache"),
            "HELM_CONFIG_HOME": str(home / ".config"),
            "HELM_DATA_HOME": str(home / ".data"),
        }
        self.core_v1().create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="fluid-system")))
        self._daemon(
            "dataset-controller", [str(self.bin / "dataset-controller"), "start", "--metrics-addr=0"], env
        )
        self._daemon(
            "vineyardruntime-controller",
            [
                str(self.bin / "vineyardruntime-controller"),
                "start",
                "--metrics-addr=0",
                "--runtime-node-port-range=32000-34000",
            ],
            env,
        )
        time.sleep(1.0)
        for daemon in self.daemons[-2:]:
            daemon.check()

    # ---- readiness ---------------------------------------------------------------------------------------
    def _api_ready(self) -> bool:
        return _https_ok(
            f"{self.server}/readyz", cert=(self.pki.admin_cert, self.pki.admin_key), ca=self.pki.ca_cert
        )

    def _default_sa_exists(self) -> bool:
        self.core_v1().read_namespaced_service_account("default", "default")
        return True

    def check(self) -> None:
        """Raise ControlPlaneError if any daemon has exited."""
        for daemon in self.daemons:
            daemon.check()

    # ---- clients and objects -----------------------------------------------------------------------------
    def api_client(self, kubeconfig: Path | None = None) -> client.ApiClient:
        """A kubernetes ApiClient for ``kubeconfig`` (default: admin); never touches the process default."""
        return config.new_client_from_config(config_file=str(kubeconfig or self.admin_kubeconfig))

    def core_v1(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client())

    def apply_fluid_crds(self) -> list[str]:
        """Create Fluid's CRDs (the build's ``crds/``), wait until each is Established; return their names."""
        api = client.ApiextensionsV1Api(self.api_client())
        names = []
        for path in sorted((self.root / "crds").glob("*.yaml")):
            body = yaml.safe_load(path.read_text())
            api.create_custom_resource_definition(body)
            names.append(body["metadata"]["name"])

        def established() -> bool:
            return all(
                any(
                    c.type == "Established" and c.status == "True"
                    for c in api.read_custom_resource_definition(n).status.conditions or []
                )
                for n in names
            )

        wait_until("Fluid CRDs Established", established, 30, self.daemons)
        return names

    # ---- test objects (see objects.py) -------------------------------------------------------------------
    def create_node(
        self, name: str, labels: dict[str, str] | None = None, capacity: dict[str, str] | None = None
    ) -> client.V1Node:
        """Create a kwok Node with its own loopback InternalIP (127.0.0.2, .3, ...) and wait until kwok
        reports it Ready; see ``objects.create_node``."""
        from .objects import create_node

        self._nodes += 1
        ip = f"127.0.{self._nodes // 250}.{self._nodes % 250 + 2}"
        return create_node(self.core_v1(), name, labels or {}, capacity, internal_ip=ip)

    def service_account_kubeconfig(self, namespace: str, name: str, role: str) -> Path:
        """A kubeconfig for ServiceAccount ``namespace/name`` bound to Role ``role``; see ``objects``."""
        from .objects import service_account_token

        token = service_account_token(self.api_client(), namespace, name, role)
        path = self.dir / f"sa-{namespace}-{name}.kubeconfig"
        return write_kubeconfig(path, self.server, self.pki.ca_cert, {"token": token})


def _base_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def _https_ok(url: str, cert: tuple[Path, Path] | None = None, ca: Path | None = None) -> bool:
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
        return resp.status == 200
