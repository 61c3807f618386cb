#!/usr/bin/env bash
# End-to-end demo (`make demo`): run the flights_delay_regression DAG with the Vineyard XCom
# backend against a throw-away local vineyardd, then print the metrics and every XCom hand-off.
#
#   SCALE=N make demo          replicate the 336,776 flights N times (default 1)
#   VINEYARD_SIZE=8Gi make demo   shared memory of vineyardd (default: 2Gi, more for SCALE > 4)
#
# Airflow state lives in <repo>/.airflow (SQLite, gitignored) and persists between runs; the
# vineyardd socket lives in a fresh /tmp/fluid-demo.XXXXXX dir (a UNIX socket path must be
# short) that is removed on exit. Full logs: .airflow/demo-logs/.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# DAG=fluid_vineyard_pipeline make demo runs the Fluid pipeline (@task.fluid steps) on the
# local backend instead of the main job.
DAG_ID="${DAG:-flights_delay_regression}"
case "$DAG_ID" in
    flights_delay_regression) METRICS_TASKS=(--metrics-task report) ;;
    fluid_vineyard_pipeline) METRICS_TASKS=(--metrics-task test)
        export AIRFLOW_CONN_FLUID_DEFAULT='{"conn_type": "fluid", "extra": {"backend": "local", "local_max_cache": "1Gi"}}' ;;
    *) echo "demo: DAG must be flights_delay_regression or fluid_vineyard_pipeline, got '$DAG_ID'" >&2; exit 2 ;;
esac

export AIRFLOW_HOME="$REPO/.airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__XCOM_BACKEND=fluid_airflow.vineyard.xcom.VineyardXComBackend

SCALE="${SCALE:-}"
if [[ -n "$SCALE" && ! "$SCALE" =~ ^[1-9][0-9]*$ ]]; then
    echo "demo: SCALE must be a whole number >= 1, got '$SCALE'" >&2
    exit 2
fi
# One run keeps every intermediate in vineyardd until the daemon stops: 0.3-0.45 GiB per unit
# of SCALE. Give it 0.5 GiB per unit plus 0.5 GiB, at least 2 GiB.
if [[ -n "${VINEYARD_SIZE:-}" ]]; then
    SIZE="$VINEYARD_SIZE"
elif [[ -n "$SCALE" && $((SCALE * 512 + 512)) -gt 2048 ]]; then
    SIZE="$((SCALE * 512 + 512))Mi"
else
    SIZE=2Gi
fi

LOG_DIR="$AIRFLOW_HOME/demo-logs"
mkdir -p "$LOG_DIR"
RUNTIME_DIR="$(mktemp -d /tmp/fluid-demo.XXXXXX)"
export AIRFLOW__FLUID__RUNTIME_DIR="$RUNTIME_DIR"

cleanup() {
    local rc=$?
    # Keep vineyardd's log for a post-mortem before its folder goes away.
    fluid-airflow vineyard stop --runtime-dir "$RUNTIME_DIR" >>"$LOG_DIR/vineyard.log" 2>&1 || true
    cp "$RUNTIME_DIR/vineyardd.log" "$LOG_DIR/vineyardd.log" 2>/dev/null || true
    rm -rf "$RUNTIME_DIR"
    exit "$rc"
}
trap cleanup EXIT

START=$SECONDS
step() { printf 'demo: %-60s ' "$1"; STEP_START=$SECONDS; }
done_step() { echo "ok ($((SECONDS - STEP_START)) s)"; }
fail_step() {  # fail_step <log file>: show the end of the log and stop
    echo "FAILED"
    echo "--- last lines of $1 ---" >&2
    tail -n 40 "$1" >&2
    exit 1
}

step "airflow db migrate ($AIRFLOW_HOME)"
airflow db migrate >"$LOG_DIR/db-migrate.log" 2>&1 || fail_step "$LOG_DIR/db-migrate.log"
done_step

step "fluid-airflow vineyard start --size $SIZE"
fluid-airflow vineyard start --runtime-dir "$RUNTIME_DIR" --size "$SIZE" >"$LOG_DIR/vineyard.log" 2>&1 ||
    fail_step "$LOG_DIR/vineyard.log"
done_step

conf_args=()
[[ -n "$SCALE" && "$DAG_ID" == flights_delay_regression ]] && conf_args=(-c "{\"scale\": $SCALE}")
step "airflow dags test $DAG_ID ${conf_args[*]:-}"
dag_rc=0
airflow dags test "$DAG_ID" "${conf_args[@]}" >"$LOG_DIR/dags-test.log" 2>&1 || dag_rc=$?
if [[ $dag_rc -eq 0 ]]; then done_step; else echo "FAILED (exit $dag_rc, log $LOG_DIR/dags-test.log)"; fi
DAG_SECONDS=$((SECONDS - STEP_START))

# The run id of this run, from Airflow's own "DagRun Finished" line (else: the latest run).
RUN_ID="$(sed -n 's/.*DagRun Finished: .* run_id=\([^,]*\),.*/\1/p' "$LOG_DIR/dags-test.log" | tail -n 1)"
run_args=()
[[ -n "$RUN_ID" ]] && run_args=(--run-id "$RUN_ID")

if [[ $dag_rc -ne 0 ]]; then
    echo "--- errors in $LOG_DIR/dags-test.log ---" >&2
    grep -E 'Error|Exception|Traceback' "$LOG_DIR/dags-test.log" | grep -v '^\s*File ' | tail -n 15 >&2 || true
fi

summary_rc=0
summary="$(python scripts/show_handoffs.py "$DAG_ID" "${run_args[@]}" "${METRICS_TASKS[@]}" 2>"$LOG_DIR/show-handoffs.log")" ||
    summary_rc=$?

# The provider's listener releases the run's objects when the run ends ([fluid] keep_for = 0).
HELD="$(fluid-airflow vineyard status --runtime-dir "$RUNTIME_DIR" --json 2>/dev/null |
    python -c 'import json, sys; print(json.load(sys.stdin)["memory_usage"])' 2>/dev/null || echo "?")"

echo
echo "================================ Demo summary ================================"
echo "Timings: DAG run ${DAG_SECONDS} s (airflow dags test, incl. ~5 s start-up), whole demo $((SECONDS - START)) s"
echo "Vineyard: local vineyardd, --size $SIZE, socket in $RUNTIME_DIR (removed on exit)"
echo "          bytes still held after the run: $HELD (the run's objects are released when it ends)"
echo "Logs: $LOG_DIR/"
echo
if [[ -n "$summary" ]]; then echo "$summary"; else tail -n 20 "$LOG_DIR/show-handoffs.log"; fi
echo "=============================================================================="

if [[ $dag_rc -ne 0 || $summary_rc -ne 0 ]]; then
    echo "demo: FAILED (airflow dags test exit $dag_rc, summary exit $summary_rc)" >&2
    exit 1
fi
