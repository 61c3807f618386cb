"""The kwok configuration of the test control plane: stages, exec and logs.

kwok (sigs.k8s.io/kwok v0.8.0) plays every kubelet. Its standalone controller has no built-in stages
(``pkg/kwok/cmd/root.go`` fails with "no stages found" when neither ``--config`` nor the Stage CRD holds one),
so this module lays out kwok's own stages from the pinned module (``kustomize/stage/{node/fast,
node/heartbeat-with-lease,pod/fast}``, copied into the build cache by scripts/controlplane/build.sh) and adds
two of ours that complete KubernetesPodOperator pods (label ``kubernetes_pod_operator: "True"``, set by
cncf-kubernetes 10.25 ``operators/pod.py``):

1. ``kpo-base-done``: a Running KPO pod whose ``base`` container has not terminated gets ``base`` terminated
   with the exit code of annotation ``fluid-airflow.test/exit-code`` (default 0) after annotation
   ``fluid-airflow.test/run-for`` (a Go duration, default 1s). Other containers (the xcom sidecar) keep
   running, as a kubelet would run them until KPO's own ``kill``. Caveat: kwok answers exec even for a
   finished pod (the refusal "cannot exec into a container in a completed pod" is kubectl's client-side
   check, k8s.io/kubectl v0.36.3 ``pkg/cmd/exec/exec.go``, not the API server's), where a real kubelet
   would fail for lack of a running container.
2. ``kpo-finish``: once ``base`` has terminated, after ``fluid-airflow.test/finish-after`` (default 3s) every
   container terminates and the phase becomes Succeeded (exit code 0) or Failed.

Exec (``ClusterExec``) runs the command on this host (``pkg/kwok/server/debugging_exec.go`` →
``pkg/utils/exec``), as the user of ``securityContext`` (``setUser`` in ``pkg/utils/exec/cmd_other.go``: the
uid and gid must exist in /etc/passwd and /etc/group). See ``cluster.py`` for the confinement around it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ANNOTATION_EXIT_CODE = "fluid-airflow.test/exit-code"
ANNOTATION_RUN_FOR = "fluid-airflow.test/run-for"
ANNOTATION_FINISH_AFTER = "fluid-airflow.test/finish-after"
EXEC_UID = 65534  # nobody/nogroup on Debian
UPSTREAM_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
_KPO = {"key": ".metadata.labels.kubernetes_pod_operator", "operator": "In", "values": ["True"]}
_ALIVE = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
_RUNNING = {"key": ".status.phase", "operator": "In", "values": ["Running"]}
_BASE_DONE = '.status.containerStatuses.[] | select( .name == "base" ) | .state.terminated'

_TERMINATED = """\
  state:
    terminated:
      exitCode: {{ $code }}
      finishedAt: {{ $now | Quote }}
      reason: {{ if eq $code "0" }}Completed{{ else }}Error{{ end }}
      startedAt: {{ $now | Quote }}"""

_BASE_DONE_TEMPLATE = f"""\
{{{{ $now := Now }}}}
{{{{ $code := or (index (or .metadata.annotations dict) "{ANNOTATION_EXIT_CODE}") "0" }}}}
containerStatuses:
{{{{ range .spec.containers }}}}
- image: {{{{ .image | Quote }}}}
  name: {{{{ .name | Quote }}}}
  restartCount: 0
{{{{ if eq .name "base" }}}}
  ready: false
  started: false
{_TERMINATED}
{{{{ else }}}}
  ready: true
  started: true
  state:
    running:
      startedAt: {{{{ $now | Quote }}}}
{{{{ end }}}}
{{{{ end }}}}
phase: Running
"""

_FINISH_TEMPLATE = f"""\
{{{{ $now := Now }}}}
{{{{ $code := or (index (or .metadata.annotations dict) "{ANNOTATION_EXIT_CODE}") "0" }}}}
conditions:
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "False"
  type: Ready
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "False"
  type: ContainersReady
containerStatuses:
{{{{ range .spec.containers }}}}
- image: {{{{ .image | Quote }}}}
  name: {{{{ .name | Quote }}}}
  restartCount: 0
  ready: false
  started: false
{_TERMINATED}
{{{{ end }}}}
phase: {{{{ if eq $code "0" }}}}Succeeded{{{{ else }}}}Failed{{{{ end }}}}
"""


class _BlockDumper(yaml.SafeDumper):
    """Dumps multi-line strings (the status templates) as readable ``|`` blocks."""


_BlockDumper.add_representer(
    str,
    lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None),
)


def _stage(name: str, selector: list[dict], delay_annotation: str, default_ms: int, template: str) -> dict:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {"matchExpressions": selector},
            "weight": 10,
            "delay": {
                "durationMilliseconds": default_ms,
                "durationFrom": {"expressionFrom": f'.metadata.annotations["{delay_annotation}"]'},
            },
            "next": {"statusTemplate": template},
        },
    }


def kpo_stages() -> list[dict]:
    """Our two stages that complete KubernetesPodOperator pods (see the module docstring)."""
    base_running = {"key": _BASE_DONE, "operator": "DoesNotExist"}
    base_done = {"key": _BASE_DONE, "operator": "Exists"}
    return [
        _stage(
            "kpo-base-done",
            [_KPO, _ALIVE, _RUNNING, base_running],
            ANNOTATION_RUN_FOR,
            1000,
            _BASE_DONE_TEMPLATE,
        ),
        _stage(
            "kpo-finish", [_KPO, _ALIVE, _RUNNING, base_done], ANNOTATION_FINISH_AFTER, 3000, _FINISH_TEMPLATE
        ),
    ]


def write_kwok_config(stage_root: Path, path: Path, exec_dir: Path, logs_file: Path) -> Path:
    """Write kwok's ``--config`` file: kwok's upstream stages, ours, one ClusterExec and one ClusterLogs.

    ``stage_root`` is the build cache's ``kwok/stage`` folder. Exec runs in ``exec_dir`` as uid/gid 65534;
    every pod's logs read ``logs_file`` (CRI log format, ``<RFC3339> stdout F <line>``: kwok's
    ``pkg/kwok/server/debugging_logs.go`` rejects plain text). A ``follow=true`` request is served
    by the request's own flag (``GetContainerLogs``) and never ends: the client must stop reading.
    """
    docs: list[dict] = []
    for rel in UPSTREAM_STAGES:
        docs.extend(d for d in yaml.safe_load_all((stage_root / rel).read_text()) if d)
    docs.extend(kpo_stages())
    docs.append(
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "ClusterExec",
            "metadata": {"name": "confined-local-exec"},
            "spec": {
                "execs": [
                    {
                        "local": {
                            "workDir": str(exec_dir),
                            "envs": [
                                {"name": "PATH", "value": "/usr/bin:/bin"},
                                {"name": "HOME", "value": "/"},
                            ],
                            "securityContext": {"runAsUser": EXEC_UID, "runAsGroup": EXEC_UID},
                        }
                    }
                ]
            },
        }
    )
    docs.append(
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "ClusterLogs",
            "metadata": {"name": "static-logs"},
            "spec": {"logs": [{"logsFile": str(logs_file)}]},
        }
    )
    path.write_text(yaml.dump_all(docs, Dumper=_BlockDumper, sort_keys=False))
    return path
