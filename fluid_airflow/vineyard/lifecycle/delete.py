"""The one delete of a Vineyard object: through the instance that holds it, and of a name only while
it still points at that object.

Used by run-end release, ``gc``, the backend's purge and re-put, copies' release and the handoffs page.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fluid_airflow.vineyard.client.calls import connected_instance

if TYPE_CHECKING:
    from vineyard import Client

log = logging.getLogger(__name__)


def delete_named(client: Client, name: str, object_id: Any) -> bool:
    """Delete the object through its holder, and its name if that still points at it; False when the
    object was already gone.

    Between listing a name and deleting it, a retried or cleared task may have repointed the name to its
    new object, which must stay. An object already gone is skipped (vineyard's ``client.delete`` of a
    missing object is a silent no-op too: docs/design.md §2).
    """
    import vineyard

    try:
        if client.get_name(name) == object_id:
            client.drop_name(name)
    except vineyard.ObjectNotExistsException:
        pass
    try:
        delete_on_holder(client, object_id)
    except vineyard.ObjectNotExistsException:
        return False
    return True


def holder_client(endpoint: str, timeout: float) -> Any:
    """A vineyard RPC client of the instance at ``endpoint`` (``host:port``), probed first."""
    from fluid_airflow.hooks.vineyard import VineyardHook

    return VineyardHook(rpc_endpoint=endpoint, timeout=timeout).get_conn()


def delete_on_holder(client: Client, object_id: Any) -> None:
    """Delete ``object_id`` through the instance that holds it (over RPC when it is another one).

    A delete through another instance frees the memory but leaves the holder believing a migrated copy
    still exists (see :func:`fluid_airflow.vineyard.lifecycle.migration.local_object`), so the holder is
    asked itself when it answers; otherwise the delete goes through ``client``.
    """
    holder = int(client.get_meta(object_id).instance_id)
    if holder != connected_instance(client):
        endpoint = str(client.meta.get(holder, {}).get("rpc_endpoint", ""))
        try:
            holder_client(endpoint, float(client.timeout_seconds)).delete(object_id)
            return
        except Exception as exc:  # unreachable holder: the delete still frees the payload
            log.warning(
                "Deleting %r through instance %s, not its holder %s: %s",
                object_id,
                connected_instance(client),
                holder,
                exc,
            )
    client.delete(object_id)
