"""The result of encoding an XCom value: what is put into Vineyard and what the reference records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Encoded:
    """A value ready for ``client.put`` plus what the reference records about it."""

    payload: Any
    type: str
    encoding: str
    shape: list[int] | None = None
    dtype: str | None = None
    columns: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
