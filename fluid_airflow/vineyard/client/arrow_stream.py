"""Arrow tables in Vineyard as one blob holding an Arrow IPC stream, read back zero-copy.

Why not Vineyard's own Table builder (``python/vineyard/data/arrow.py``, v6d v0.24.2): it creates
a blob per buffer and a metadata object per array, batch and schema, each a round trip to
vineyardd (a 16-column frame: 32 blobs and 20 ``create_metadata`` calls), and its resolver runs
per member (``inspect.getfullargspec`` each time): ~30 ms of fixed cost per put and get, 7x
pickle for a 1 MiB frame. Here a table is written once, by Arrow's own IPC writer, straight into
one blob (``create_blob``, ``FixedSizeBufferWriter`` over the blob's memory, ``seal``), and one
metadata object of type :data:`TYPENAME` names it (blobs alone cannot be persisted, docs/design.md
§3). Reading opens the stream over the blob's shared memory (``pa.ipc.open_stream`` on a
``pa.py_buffer``): every column buffer is a slice of the blob, nothing is copied, and every Arrow
type round-trips as Arrow writes it.

Large blobs are pre-faulted in one call (:func:`populate`) before Arrow copies into them: one
``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14+) maps every page of the range instead of one page
fault per 4 KiB page during the copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vineyard import Client

TYPENAME = "fluid_airflow::ArrowStream"
MEMBER = "stream"
POPULATE_FROM = 4 << 20  # bytes: below this, faulting page by page costs less than the syscall
_MADV_POPULATE_WRITE = 23  # linux/mman.h (Linux 5.14)
_PAGE = mmap.PAGESIZE


def put_table(client: Client, table: Any, size: int | None = None) -> Any:
    """Store ``table`` (a ``pyarrow.Table``) as one IPC-stream blob; return the new object's id.

    :param size: :func:`stream_size` of ``table`` (bytes) when the caller has it already.

    The object is transient (the caller persists and names it). Allocations go through
    ``client.create_blob`` and ``client.create_metadata``, so a caller wrapping those (the put's
    in-flight journal) sees both.

    :raises vineyard.NotEnoughMemoryException: the stream does not fit in vineyardd's memory.
    """
    import pyarrow as pa
    import vineyard

    if size is None:
        size = stream_size(table)
    builder = client.create_blob(size)
    target = pa.py_buffer(memoryview(builder))
    sink = pa.FixedSizeBufferWriter(target)
    if size >= POPULATE_FROM:
        populate(target.address, size)
        # Copies of large buffers split over the cores: measured 1 GiB in 0.25 s instead of 0.39 s on 2.
        sink.set_memcopy_threads(min(4, os.cpu_count() or 1))
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    blob = builder.seal(client)
    meta = vineyard.ObjectMeta()
    # Setters vineyard's own builders use (python/vineyard/data/tensor.py, v0.24.2); its _C.pyi
    # declares the properties read-only.
    meta.typename = TYPENAME  # type: ignore[misc]
    meta.nbytes = size  # type: ignore[misc]
    meta["num_rows"] = int(table.num_rows)
    meta.add_member(MEMBER, blob)
    return client.create_metadata(meta).id


def read_table(client: Client, object_id: Any) -> Any:
    """The ``pyarrow.Table`` of a :data:`TYPENAME` object, its buffers views of shared memory."""
    return _table_of(client.get_object(object_id).member(MEMBER))


def _table_of(blob: Any) -> Any:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(memoryview(blob))).read_all()


def resolver(obj: Any) -> Any:
    """Vineyard resolver of :data:`TYPENAME` objects: ``client.get(id)`` gives the ``pyarrow.Table``."""
    return _table_of(obj.member(MEMBER))


def register_resolver() -> None:
    """Let any vineyard client of this process ``get`` these objects (as a ``pyarrow.Table``):
    registers :func:`resolver` in vineyard's default resolver context (``ResolverContext.register``,
    ``python/vineyard/core/resolver.py``, v0.24.2). Idempotent; our hook does it on every connect.
    A plain vineyard program reading our objects calls it once (imports vineyard)."""
    from vineyard.core.resolver import default_resolver_context

    default_resolver_context.register(TYPENAME, resolver)


def stream_size(table: Any) -> int:
    """Bytes of ``table`` as an IPC stream (schema, batches, end marker): the size of the blob
    :func:`put_table` allocates. Counted by Arrow's writer on a mock sink, nothing is copied."""
    import pyarrow as pa

    sink = pa.MockOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return int(sink.size())


def populate(address: int, size: int) -> None:
    """Map every page of ``[address, address + size)`` writable in one ``madvise`` call.

    Best effort: on kernels without ``MADV_POPULATE_WRITE`` (before 5.14) or off Linux nothing
    happens and the copy faults the pages in as it goes.
    """
    start = address - address % _PAGE
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(address + size - start), _MADV_POPULATE_WRITE)
