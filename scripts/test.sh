#!/usr/bin/env bash
# The pytest part of `make test`, in three runs so it fits a 2-core CI machine:
#   1. the control-plane tests (tests/test_k8s_*.py, tests/test_controlplane.py: mostly waiting on
#      Kubernetes and Fluid controllers) in a background pytest process, beside
#   2. the unit tests (real vineyardd, etcd, dag.test) in the foreground;
#   3. then the deployment tests (a real Airflow with its scheduler: CPU-heavy) alone.
# With a second interpreter (the pandas 3 venv) and its tests, those run in the foreground after the
# unit tests, while the control-plane tests are still running (they take longer than the unit tests).
# Each run has its own session fixtures, temporary folders and free ports. The exit code is non-zero
# if any run failed; every run's output is printed.
# Usage: scripts/test.sh <python> [<python3> <test file>...]   (the venvs' interpreters)
set -uo pipefail
PY=${1:?usage: scripts/test.sh <python> [<python3> <test file>...]}
PY3=${2:-}
PANDAS3_TESTS=("${@:3}")
cd "$(dirname "$0")/.."

CONTROL_PLANE=(tests/test_controlplane.py tests/test_k8s_*.py)
IGNORE=(--ignore=tests/test_torch.py)
for f in "${CONTROL_PLANE[@]}"; do IGNORE+=("--ignore=$f"); done

log=$(mktemp -t fa-control-plane-tests.XXXXXX)
"$PY" -m pytest -p no:cacheprovider "${CONTROL_PLANE[@]}" >"$log" 2>&1 &
cp_pid=$!
# If this script is interrupted: SIGINT the background run (pytest then runs its finalizers, which stop
# the control plane's daemons by process id).
trap 'kill -INT "$cp_pid" 2>/dev/null; wait "$cp_pid" 2>/dev/null; rm -f "$log"' EXIT

echo "--- unit tests (the control-plane tests run beside them; their output follows)"
"$PY" -m pytest -m "not deployment" "${IGNORE[@]}"
units=$?

pandas3=0
if [[ -n "$PY3" ]]; then
  echo "--- the same on pandas 3 ($PY3): ${PANDAS3_TESTS[*]}"
  "$PY3" -m pytest -p no:cacheprovider "${PANDAS3_TESTS[@]}"
  pandas3=$?
fi

wait "$cp_pid"
cp=$?
trap - EXIT
echo "--- control-plane tests: ${CONTROL_PLANE[*]}"
cat "$log"
rm -f "$log"

echo "--- deployment tests (a real Airflow: api-server, scheduler, dag-processor, triggerer)"
"$PY" -m pytest -m deployment "${IGNORE[@]}"
deployment=$?

echo "--- exit codes: unit $units, pandas 3 $pandas3, control plane $cp, deployment $deployment"
exit $(( units || pandas3 || cp || deployment ))
