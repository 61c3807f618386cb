"""Which ids a blob could have got, when its creator died before it learnt the id.

vineyardd allocates a blob when ``create_blob`` reaches it and only then replies with the id;
a producer killed between the two leaves a blob that no listing shows (unsealed blobs are
skipped by ``ListData``: v6d ``src/server/server/vineyard_server.cc`` @ v0.24.2) and whose id
nobody knows. The id is not random, though (v6d ``src/common/util/uuid.h`` @ v0.24.2,
``IDGenerator::GenerateID`` via ``GenerateBlobID``)::

    0x8000000000000000 | (milliseconds since the epoch << 22) | (instance 0 << 12) | sequence

with ``sequence`` a 12-bit counter vineyardd increments for every id it makes. A put journals
the time just before it asks for a blob (and the last id it got), so the blob's id is one of a
few thousand candidates (up to ~200,000 for a put's first blob), which batch ``delete`` calls
clear (a silent no-op for ids that do not exist; 12,800 ids took 0.17 s, measured).
"""

from __future__ import annotations

BLOB_BIT = 0x8000000000000000
TIMESTAMP_SHIFT = 22
SEQUENCE_MASK = 0xFFF
# Milliseconds around the journaled time in which vineyardd may have made the id: clock
# granularity before, the create_blob round trip after (a stalled vineyardd makes it later).
BEFORE_MS, AFTER_MS = 2, 50
BATCH = 20_000  # ids per delete call, well inside one call's timeout
# Ids other clients may have taken between the last id this put saw and the blob's.
SEQUENCE_SPAN = 256


def parse(object_id: str) -> int:
    """``o8…`` (vineyard's ``repr`` of an ObjectID) to its integer."""
    return int(object_id.lstrip("o"), 16)


def candidates(asked_ms: int, last_id: str | None = None) -> list[int]:
    """Every id a blob asked for at ``asked_ms`` (epoch milliseconds) could have.

    :param last_id: an id vineyardd made for this put just before (narrows the sequence
        numbers to the :data:`SEQUENCE_SPAN` after it); None: any sequence number.
    """
    if last_id is None:
        sequences = range(SEQUENCE_MASK + 1)
    else:
        start = parse(last_id) & SEQUENCE_MASK
        sequences = range(start + 1, start + 1 + SEQUENCE_SPAN)
    return [
        BLOB_BIT | (ms << TIMESTAMP_SHIFT) | (seq & SEQUENCE_MASK)
        for ms in range(asked_ms - BEFORE_MS, asked_ms + AFTER_MS + 1)
        for seq in sequences
    ]
