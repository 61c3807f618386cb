"""``fluid-airflow``: command-line helpers of the provider.

``fluid-airflow vineyard start|stop|status`` manage the local vineyardd (a thin layer over
:class:`fluid_airflow.vineyard.local.daemon.LocalVineyardd`). Defaults come from the ``[fluid]`` Airflow
config section (``AIRFLOW__FLUID__RUNTIME_DIR``, ``AIRFLOW__FLUID__LOCAL_VINEYARD_SIZE``).
``fluid-airflow cluster start|stop|status`` manage a local Vineyard cluster: one etcd and N
vineyardd with RPC, each standing for a cache node (:mod:`fluid_airflow.vineyard.local.cluster`).
``fluid-airflow gc`` deletes the XCom backend's Vineyard objects that Airflow no longer refers to
(:mod:`fluid_airflow.vineyard.lifecycle.gc`); it reads Airflow's metadata DB, like any Airflow CLI command.

Exit codes: 0 success; 1 error (one paragraph on stderr, no traceback); 2 bad usage (argparse);
``status`` exits 3 when no vineyardd answers, like ``systemctl status``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fluid_airflow.units import format_bytes

if TYPE_CHECKING:
    from fluid_airflow.vineyard.local.daemon import DaemonStatus

    # what add_subparsers returns: argparse names it only privately (typeshed types it so)
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3


def _seconds(text: str) -> float:
    """A ``--timeout`` value: a finite number of seconds above 0 (argparse reports the error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: a timeout is a number of seconds above 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluid-airflow", description=__doc__.split("\n\n")[0])
    groups = parser.add_subparsers(dest="group", required=True, metavar="{vineyard,cluster,gc,release}")
    _add_vineyard(groups)
    _add_cluster(groups)
    _add_gc(groups)
    _add_release(groups)
    return parser


def _add_vineyard(groups: Subcommands) -> None:
    vineyard = groups.add_parser("vineyard", help="manage the local vineyardd")
    commands = vineyard.add_subparsers(dest="command", required=True, metavar="{start,stop,status}")

    runtime_help = "folder of the socket, pid, state and log files (default: [fluid] runtime_dir)"
    start = commands.add_parser("start", help="start vineyardd in the background and wait until it answers")
    start.add_argument("--runtime-dir", help=runtime_help)
    start.add_argument(
        "--size",
        help="shared memory, e.g. 512Mi, 2Gi, 1.5Gi, 1G (=1Gi, as in vineyardd) or bytes "
        "(default: [fluid] local_vineyard_size)",
    )
    start.add_argument("--socket", help="IPC socket path (default: <runtime-dir>/vineyard.sock)")
    start.add_argument(
        "--rpc-port",
        type=int,
        help="also serve RPC on this TCP port: listens on ALL interfaces, unauthenticated; "
        "needs --allow-public-rpc",
    )
    start.add_argument(
        "--allow-public-rpc",
        action="store_true",
        help="accept that --rpc-port exposes every object to anyone who can reach this host",
    )
    start.add_argument(
        "--socket-group",
        help="group also allowed to use the socket (folder 0710, socket 0660); default [fluid] "
        "socket_group, else only you (0700 / 0600)",
    )
    start.add_argument(
        "--reserve-memory",
        action="store_true",
        help="take all of --size from the machine at start (vineyardd --reserve_memory): the first puts "
        "skip first-touch page faults",
    )
    start.add_argument("--timeout", type=_seconds, default=30.0, help="seconds to wait for readiness (30)")

    stop = commands.add_parser("stop", help="stop the vineyardd of the runtime dir (SIGTERM, then SIGKILL)")
    stop.add_argument("--runtime-dir", help=runtime_help)
    stop.add_argument("--timeout", type=_seconds, default=10.0, help="seconds before SIGKILL (10)")

    status = commands.add_parser("status", help="show whether vineyardd runs; exit 0 if so, 3 if not")
    status.add_argument("--runtime-dir", help=runtime_help)
    status.add_argument("--json", action="store_true", help="print the status as a JSON object")


def _add_cluster(groups: Subcommands) -> None:
    cluster = groups.add_parser("cluster", help="manage a local Vineyard cluster (etcd + N vineyardd)")
    cluster_commands = cluster.add_subparsers(dest="command", required=True, metavar="{start,stop,status}")
    cluster_help = "folder of the cluster: etcd/, node<i>/ and cluster.json (keep it short)"
    cstart = cluster_commands.add_parser(
        "start", help="start etcd and N vineyardd with RPC (all interfaces, unauthenticated)"
    )
    cstart.add_argument("--runtime-dir", required=True, help=cluster_help)
    cstart.add_argument("--instances", type=int, default=3, help="vineyardd instances, one per 'node' (3)")
    cstart.add_argument("--size", default="256Mi", help="shared memory of each vineyardd (256Mi)")
    cstop = cluster_commands.add_parser("stop", help="stop every vineyardd, then etcd")
    cstop.add_argument("--runtime-dir", required=True, help=cluster_help)
    cstatus = cluster_commands.add_parser("status", help="list the instances; exit 0 if all answer, 3 if not")
    cstatus.add_argument("--runtime-dir", required=True, help=cluster_help)
    cstatus.add_argument("--json", action="store_true", help="print the instances as JSON")


def _add_gc(groups: Subcommands) -> None:
    gc = groups.add_parser(
        "gc",
        help="delete Vineyard objects of deleted XCom rows, deleted DAG runs and runs past [fluid] keep_for",
    )
    gc.set_defaults(command="gc")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be reclaimed")
    gc.add_argument("--dag-id", help="only look at this DAG's objects")
    gc.add_argument("--json", action="store_true", help="print the summary as a JSON object")


def _add_release(groups: Subcommands) -> None:
    release = groups.add_parser("release", help="release every Vineyard object of one DAG run now")
    release.set_defaults(command="release")
    release.add_argument("--dag-id", required=True, help="the DAG of the run")
    release.add_argument("--run-id", required=True, help="the DAG run")
    release.add_argument(
        "--timeout", type=_seconds, help="seconds one vineyardd call may wait ([fluid] vineyard_timeout)"
    )
    release.add_argument(
        "--force",
        action="store_true",
        help="release even if Airflow's DB says the run is queued or running (its tasks lose their inputs)",
    )
    release.add_argument(
        "--if-clear-number",
        type=int,
        metavar="N",
        help="release only if the run is finished and its clear number is still N (not cleared since it "
        "ended); the scheduler's run-end release passes it",
    )


def describe(status: DaemonStatus) -> str:
    """Human-readable lines for ``status``."""
    if not status.running:
        if status.pid:
            return (
                f"vineyardd pid {status.pid} is alive but does not answer on socket {status.socket} "
                f"(hung, or stopped: `kill -CONT {status.pid}`); otherwise restart it: "
                "`fluid-airflow vineyard stop`, then `start` (its objects are lost)"
            )
        return f"vineyardd is not running (socket {status.socket})"
    return "\n".join(
        [
            f"vineyardd is running: pid {status.pid or 'unknown (not started by fluid-airflow)'}, "
            f"socket {status.socket}",
            f"memory: {format_bytes(status.memory_usage or 0)} used of "
            f"{format_bytes(status.memory_limit or 0)} (instance {status.instance_id})",
            f"log: {status.log_file}",
        ]
    )


def _start(args: argparse.Namespace) -> int:
    from fluid_airflow import config
    from fluid_airflow.vineyard.local.daemon import LocalVineyardd

    daemon = LocalVineyardd(args.runtime_dir, socket=args.socket, socket_group=args.socket_group)
    status = daemon.start(
        args.size,
        rpc_port=args.rpc_port,
        allow_public_rpc=args.allow_public_rpc,
        reserve_memory=args.reserve_memory,
        timeout=args.timeout,
    )
    print(describe(status))
    # Airflow processes find the socket through [fluid] vineyard_socket, else the default runtime dir.
    if config.vineyard_socket() == status.socket:
        print("Airflow uses this socket by default ([fluid] vineyard_socket); nothing to export.")
    else:
        print(
            "To make Airflow use it, set in the environment of every Airflow process (task processes, and "
            "the scheduler and API server, which release objects):"
        )
        print(f"export AIRFLOW__FLUID__VINEYARD_SOCKET={status.socket}")
    return EXIT_OK


def _stop(args: argparse.Namespace) -> int:
    from fluid_airflow.vineyard.local.daemon import LocalVineyardd

    daemon = LocalVineyardd(args.runtime_dir)
    pid = daemon.pid()
    if daemon.stop(timeout=args.timeout):
        print(f"vineyardd pid {pid} stopped (runtime dir {daemon.runtime_dir})")
    else:
        print(f"no vineyardd running in {daemon.runtime_dir}; nothing to stop")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from fluid_airflow.vineyard.local.daemon import LocalVineyardd

    status = LocalVineyardd(args.runtime_dir).status()
    print(json.dumps(status.to_dict(), indent=2) if args.json else describe(status))
    return EXIT_OK if status.running else EXIT_NOT_RUNNING


def _release(args: argparse.Namespace) -> int:
    from fluid_airflow.vineyard.lifecycle.release import release_run
    from fluid_airflow.vineyard.xcom import backend_hook

    still_ended = None
    if args.if_clear_number is not None:
        from fluid_airflow.vineyard.lifecycle.metadb import run_still_ended

        def still_ended() -> bool:
            return run_still_ended(args.dag_id, args.run_id, args.if_clear_number)

    elif not args.force:
        _refuse_an_unfinished_run(args.dag_id, args.run_id)
    client = backend_hook(args.timeout).get_conn()
    report = release_run(client, args.dag_id, args.run_id, still_ended=still_ended)
    run = f"DAG run {args.dag_id} / {args.run_id}"
    if report.skipped:
        print(f"released nothing of {run}: {report.skipped}")
        return EXIT_OK
    print(f"released {report.objects} objects ({report.bytes} bytes) of {run}")
    if not report.objects and not args.force:
        from fluid_airflow.vineyard.lifecycle.metadb import run_state

        if run_state(args.dag_id, args.run_id) is None:
            print(f"note: Airflow's DB has no {run}; check the DAG id and run id (`airflow dags list-runs`)")
    return EXIT_OK


def _refuse_an_unfinished_run(dag_id: str, run_id: str) -> None:
    from sqlalchemy.exc import OperationalError

    from fluid_airflow.exceptions import FluidAirflowError
    from fluid_airflow.vineyard.lifecycle.release import unfinished

    try:
        problem = unfinished(dag_id, run_id, "pass --force")
    except OperationalError as exc:
        raise FluidAirflowError(
            f"Airflow's metadata DB cannot be read ({str(exc.orig).splitlines()[0]}), so whether DAG run "
            f"{dag_id} / {run_id} has ended is unknown. Run this where Airflow's DB is configured, or pass "
            "--force to release it without that check."
        ) from exc
    if problem:
        raise FluidAirflowError(problem)


def _gc(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError

    from fluid_airflow.exceptions import FluidAirflowError
    from fluid_airflow.vineyard.lifecycle.gc import collect, describe
    from fluid_airflow.vineyard.xcom import backend_hook

    try:
        report = collect(backend_hook().get_conn(), dag_id=args.dag_id, dry_run=args.dry_run)
    except OperationalError as exc:
        raise FluidAirflowError(
            f"Airflow's metadata DB cannot be read ({str(exc.orig).splitlines()[0]}). Run `airflow db "
            "migrate`, or point AIRFLOW_HOME / [database] sql_alchemy_conn at the DB your Airflow uses."
        ) from exc
    print(json.dumps(report.to_dict(), indent=2) if args.json else describe(report))
    return EXIT_OK


def _cluster_start(args: argparse.Namespace) -> int:
    from fluid_airflow.vineyard.local.cluster import LocalVineyardCluster

    cluster = LocalVineyardCluster(args.runtime_dir, instances=args.instances)
    for instance in cluster.start(args.size):
        where = f"socket {instance.socket}, RPC port {instance.rpc_port}"
        print(f"instance {instance.index}: pid {instance.pid}, {where}")
    print(f"etcd: {cluster.etcd.endpoint} (pid {cluster.etcd.pid})")
    print("A task on 'node' i uses: export AIRFLOW__FLUID__VINEYARD_SOCKET=<socket of instance i>")
    return EXIT_OK


def _cluster_stop(args: argparse.Namespace) -> int:
    from fluid_airflow.vineyard.local.cluster import LocalVineyardCluster

    stopped = LocalVineyardCluster(args.runtime_dir).stop()
    print(f"cluster in {args.runtime_dir} {'stopped' if stopped else 'was not running'}")
    return EXIT_OK


def _cluster_status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from fluid_airflow.vineyard.local.cluster import LocalVineyardCluster

    cluster = LocalVineyardCluster(args.runtime_dir)
    if not cluster.state_file.exists():
        print(f"no cluster in {args.runtime_dir} (no cluster.json)")
        return EXIT_NOT_RUNNING
    instances = cluster.instances()
    healthy = cluster.etcd.healthy()
    if args.json:
        print(
            json.dumps(
                {
                    "etcd": cluster.etcd.endpoint,
                    "etcd_healthy": healthy,
                    "instances": [asdict(i) for i in instances],
                }
            )
        )
    else:
        print(f"etcd {cluster.etcd.endpoint}: {'healthy' if healthy else 'not answering'}")
        for i in instances:
            print(f"instance {i.index}: {'pid ' + str(i.pid) if i.pid else 'not running'}, socket {i.socket}")
    return EXIT_OK if healthy and all(i.pid for i in instances) else EXIT_NOT_RUNNING


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fluid-airflow`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    # Airflow configures logging on import, so it is imported before our handler is added.
    import airflow  # noqa: F401

    from fluid_airflow.exceptions import FluidAirflowError

    # Warnings the user must see (stale socket removed, public RPC) go to stderr as plain lines;
    # our own prints already say what succeeded.
    logger = logging.getLogger("fluid_airflow")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fluid-airflow: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    handlers = {
        ("vineyard", "start"): _start,
        ("vineyard", "stop"): _stop,
        ("vineyard", "status"): _status,
        ("cluster", "start"): _cluster_start,
        ("cluster", "stop"): _cluster_stop,
        ("cluster", "status"): _cluster_status,
        ("gc", "gc"): _gc,
        ("release", "release"): _release,
    }
    try:
        return handlers[(args.group, args.command)](args)
    except BrokenPipeError:  # output piped into e.g. `head`: the command itself did its work
        sys.stderr.close()
        return EXIT_OK
    except (FluidAirflowError, OSError, ValueError) as exc:
        message = " ".join(str(exc).split("\n", 1)[0].split())
        detail = str(exc).split("\n", 1)[1] if "\n" in str(exc) else ""
        where = args.group if args.group == args.command else f"{args.group} {args.command}"
        print(f"fluid-airflow {where}: error: {message}", file=sys.stderr)
        if detail:  # e.g. the last lines of vineyardd's log
            print(detail, file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
