"""Where the objects behind XCom references live: bytes per vineyardd instance and per host.

Read from Vineyard's metadata, not from the references: an object's holder is
``ObjectMeta.instance_id`` (shared metadata of a persisted object, readable from any instance:
docs/design.md §9) and its size the reference's ``bytes`` (``memory_usage`` counts only buffers
present locally, so it is 0 from another instance, §9); the migrated copies are found by name
(:func:`~fluid_airflow.vineyard.data.naming.copies_pattern`); an instance's host is the ``hostname``
of its entry in the cluster table ``Client.meta``. Object-level affinity
(:func:`fluid_airflow.fluid.pods.object_affinity`) takes :func:`host_bytes` as its weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fluid_airflow import exceptions as errors
from fluid_airflow.vineyard.client.calls import LIST_LIMIT
from fluid_airflow.vineyard.data import inline
from fluid_airflow.vineyard.data.naming import copies_pattern
from fluid_airflow.vineyard.data.reference import VineyardReference, is_reference
from fluid_airflow.vineyard.data.tree import is_tree, references_in

if TYPE_CHECKING:
    from vineyard import Client


@dataclass
class Holding:
    """What one vineyardd instance holds of the given references: ``bytes`` and the object names."""

    instance_id: int
    host: str
    rpc_endpoint: str
    bytes: int = 0
    names: list[str] = field(default_factory=list)


def _references(refs: Any) -> list[VineyardReference]:
    if isinstance(refs, VineyardReference):
        return [refs]
    if is_tree(refs) or is_reference(refs):
        return [VineyardReference.from_json(r) for r in references_in(refs)]
    if inline.is_inline(refs):  # a small value kept in Airflow's DB: held by no vineyardd
        return []
    if isinstance(refs, (list, tuple)):
        return [r for item in refs for r in _references(item)]
    raise errors.FluidSpecError(
        f"a {type(refs).__name__} is not a Vineyard XCom reference: only values the Vineyard XCom "
        "backend stored (arrays, DataFrames, Arrow data) have a location"
    )


def locate(client: Client, refs: Any) -> dict[int, Holding]:
    """Bytes held per instance for ``refs`` (originals and recorded copies), largest first.

    Objects that no longer exist are left out (reading them is the lost-object error).

    :param refs: a reference (dict or :class:`VineyardReference`), a reference tree, or a list.
    :raises FluidSpecError: an element is not a reference.
    """
    import vineyard

    cluster = client.meta
    held: dict[int, Holding] = {}
    for ref in _references(refs):
        objects = {ref.name: vineyard.ObjectID(ref.object_id)}
        objects.update(client.list_names(copies_pattern(ref.name, ref.object_id), limit=LIST_LIMIT))
        for name, object_id in objects.items():
            try:
                meta = client.get_meta(object_id)
            except vineyard.ObjectNotExistsException:
                continue
            instance = int(meta.instance_id)
            entry = cluster.get(instance, {})
            holding = held.setdefault(
                instance,
                Holding(instance, str(entry.get("hostname", "")), str(entry.get("rpc_endpoint", ""))),
            )
            holding.bytes += ref.bytes  # a copy is a full copy; memory_usage is 0 from elsewhere
            holding.names.append(name)
    return dict(sorted(held.items(), key=lambda item: (-item[1].bytes, item[0])))


def host_bytes(client: Client, refs: Any) -> dict[str, int]:
    """Bytes held per host for ``refs``, largest first (several instances may share a host)."""
    totals: dict[str, int] = {}
    for holding in locate(client, refs).values():
        if holding.host:
            totals[holding.host] = totals.get(holding.host, 0) + holding.bytes
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))
