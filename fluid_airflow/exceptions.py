"""Exceptions raised by fluid-airflow.

Every message names the object concerned, the cause, and the fix, so a DAG author reading a
failed task's log knows what to do without reading this package's source.
"""

from __future__ import annotations

from airflow.exceptions import AirflowException


class FluidAirflowError(AirflowException):
    """Base class of every error raised by fluid-airflow."""


class VineyardDaemonError(FluidAirflowError):
    """A local vineyardd could not be started, stopped or queried."""


class InvalidSizeError(VineyardDaemonError, ValueError):
    """A memory size string (``512Mi``, ``4Gi``, ``1G``, ``1024000``) could not be parsed."""


class InsufficientMemoryError(VineyardDaemonError):
    """The machine or its cgroup cannot provide the shared memory asked of vineyardd."""


class SocketInUseError(VineyardDaemonError):
    """The IPC socket path is already served by a live vineyardd."""


class VineyardConnectionError(FluidAirflowError):
    """No vineyardd answers at the configured IPC socket or RPC endpoint, or the connection broke.

    Retryable: the task's retries apply once vineyardd is back.
    """


class VineyardTimeoutError(VineyardConnectionError, TimeoutError):
    """vineyardd accepted the connection but did not answer within ``[fluid] vineyard_timeout``."""


class UnsupportedXComValueError(FluidAirflowError, TypeError):
    """A value cannot be stored as an XCom: raised in the producer, at push time.

    :param xcom: the XCom the message names (``XComScope.describe()``), when the raiser knew it; the
        backend names it for the codecs, which do not.
    """

    def __init__(self, message: str, *, xcom: str = "") -> None:
        super().__init__(message)
        self.xcom = xcom


class VineyardReadBackError(FluidAirflowError):
    """Vineyard stored a value but cannot give it back intact: raised in the producer, at push time."""


class VineyardObjectLostError(FluidAirflowError):
    """An XCom reference points at a Vineyard object that no longer exists (or was replaced).

    Typical causes: vineyardd restarted (``--meta local`` keeps nothing), the object was
    released or garbage-collected, or someone deleted it by hand. The fix is to clear the
    producing task so it recomputes the value.
    """


class FluidSpecError(FluidAirflowError, ValueError):
    """A Dataset or VineyardRuntime spec is invalid; raised before any API request."""


class FluidNotInstalledError(FluidAirflowError):
    """The Kubernetes API has no ``data.fluid.io`` resources: Fluid's CRDs are not installed."""


class FluidPermissionError(FluidAirflowError):
    """The API refused a request (HTTP 403): the service account lacks an RBAC permission."""


class FluidConflictError(FluidAirflowError):
    """An object of that name exists with a different spec (HTTP 409 or adopt check)."""


class FluidApiError(FluidAirflowError):
    """Any other Kubernetes API failure, after retries of transient errors."""


class FluidRuntimeFailedError(FluidAirflowError):
    """A Dataset or its VineyardRuntime reached a failed state while we waited for readiness."""


class FluidTimeoutError(FluidAirflowError, TimeoutError):
    """A bounded wait (readiness, deletion) ran out; the message says what was still pending."""


class FluidSchedulingError(FluidAirflowError):
    """A task pod was never scheduled within its timeout; the message names its node affinity."""


class VineyardOutOfMemoryError(FluidAirflowError):
    """vineyardd has no room for an XCom value: raised in the producer, at push time.

    Raised before the put when the value's estimated size exceeds the free shared memory, or when
    vineyardd refuses the put itself. The message gives needed, free and limit bytes, the DAG runs
    whose objects hold the most memory, and the fix.

    :ivar needed: estimated bytes of the value.
    :ivar free: free bytes of the vineyardd (None when it could not be queried).
    :ivar limit: its ``--size`` in bytes (None when it could not be queried).
    :ivar holders: the largest holders, ``(dag_id, run_id, bytes, objects)`` tuples.
    """

    def __init__(
        self,
        message: str,
        *,
        needed: int | None = None,
        free: int | None = None,
        limit: int | None = None,
        holders: list | None = None,
    ) -> None:
        super().__init__(message)
        self.needed = needed
        self.free = free
        self.limit = limit
        self.holders = list(holders or [])
