"""polars and torch values in Vineyard, zero-copy both ways where the libraries allow.

Both libraries are optional (extras ``polars`` and ``torch``); this module imports them only
when a value of theirs is pushed or read.

- polars ``DataFrame``/``Series``: converted to Arrow with ``to_arrow(compat_level=oldest)``
  (``large_string``/``large_binary``: pandas and older readers of the stream know them; the
  newer ``string_view`` they may not), stored as an Arrow IPC stream (encoding ``arrow``,
  :mod:`fluid_airflow.vineyard.client.arrow_stream`) and rebuilt with ``pl.from_arrow(...,
  rechunk=False)``: numeric columns keep pointing at shared memory; polars copies strings into
  its own view layout. A ``LazyFrame`` is a query plan, not data, and is refused.
- torch tensors (CPU, dense): stored as a Vineyard ``Tensor`` over the tensor's own buffer
  (``Tensor.numpy()`` shares it; encoding ``tensor``). dtypes numpy lacks travel as a
  same-width integer view (``bfloat16`` as ``int16``, float8 as ``uint8``) or, for complex
  numbers, as ``view_as_real``; read back with ``torch.from_numpy`` and the inverse view, no
  copy. Autograd history is not stored (the tensor is detached).

Mutability: as every value read from Vineyard, these are read-only. polars is immutable anyway.
torch has no read-only tensors: a tensor read back points at vineyardd memory the consumer maps
read-only (``MmapEntry::map_readonly``, ``src/client/client.cc`` at v0.24.2), so an in-place
operation on it kills the process (SIGSEGV); ``tensor.clone()`` first.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

# Module import, not names: Airflow may load this module while fluid_airflow.exceptions is
# still initialising (it imports airflow, whose config loads the XCom backend).
from fluid_airflow import exceptions as errors
from fluid_airflow.vineyard.data.arrowtypes import arrow_storage, restore_arrow, widen
from fluid_airflow.vineyard.data.encoded import Encoded
from fluid_airflow.vineyard.data.reference import VineyardReference, summarize_columns

MODULES = ("polars", "torch")
HEAD_ROWS = 16
# torch dtypes whose numpy twin Vineyard's Tensor stores and returns exactly.
_TORCH_NATIVE = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)


def _root(value: object) -> set[str]:
    return {c.__module__.split(".")[0] for c in type(value).__mro__}


def is_supported(value: object) -> bool:
    """True for polars DataFrames, Series and LazyFrames (refused with a message) and torch tensors."""
    modules = _root(value)
    if "polars" in modules:
        import polars as pl

        return isinstance(value, (pl.DataFrame, pl.Series, pl.LazyFrame))
    if "torch" in modules:
        import torch

        return isinstance(value, torch.Tensor)
    return False


def encode(value: Any) -> Encoded:
    """Encode a polars or torch value (see the module docstring).

    :raises UnsupportedXComValueError: a LazyFrame; a tensor on a GPU, sparse, quantized or of a
        dtype without a fixed width; a polars value Arrow cannot hold.
    """
    if "torch" in _root(value):
        return _encode_tensor(value)
    import polars as pl

    if isinstance(value, pl.LazyFrame):
        raise errors.UnsupportedXComValueError(
            "a polars LazyFrame is a query plan, not data, and cannot be stored. Return "
            "lazy_frame.collect() (a polars DataFrame) instead."
        )
    oldest = pl.CompatLevel.oldest()
    if isinstance(value, pl.Series):
        import pyarrow as pa

        table = pa.table({"values": value.to_arrow(compat_level=oldest)})
        payload, extra = arrow_storage(table)
        return Encoded(
            payload=payload,
            type="polars.Series",
            encoding="arrow",
            shape=[len(value)],
            dtype=str(value.dtype),
            extra={"series_name": value.name, **extra},
        )
    payload, extra = arrow_storage(value.to_arrow(compat_level=oldest))
    return Encoded(
        payload=payload,
        type="polars.DataFrame",
        encoding="arrow",
        shape=[value.height, value.width],
        columns=summarize_columns(list(value.schema.items())),
        extra=extra,
    )


def _encode_tensor(tensor: Any) -> Encoded:
    import torch

    what = f"torch tensor of dtype {tensor.dtype} on {tensor.device}"
    if tensor.device.type != "cpu":
        raise errors.UnsupportedXComValueError(f"a {what} cannot be stored; return tensor.cpu() instead.")
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise errors.UnsupportedXComValueError(
            f"a {what} with layout {tensor.layout} cannot be stored; return tensor.to_dense() "
            "(or tensor.dequantize()) instead."
        )
    name = str(tensor.dtype).removeprefix("torch.")
    data = tensor.detach()
    if not data.is_contiguous():
        data = data.contiguous()
    if name in _TORCH_NATIVE:
        via, array = "native", data.numpy()
    elif data.is_complex():
        via, array = "complex", torch.view_as_real(data).numpy()
    elif data.element_size() in _INT_OF_SIZE:
        via, array = "view", data.view(_int_of_size(data.element_size())).numpy()
    else:
        raise errors.UnsupportedXComValueError(f"a {what} cannot be stored; convert it to a numeric dtype.")
    return Encoded(
        payload=array,
        type="torch.Tensor",
        encoding="tensor",
        shape=list(tensor.shape),
        dtype=name,
        extra={"via": via},
    )


_INT_OF_SIZE = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def _int_of_size(size: int) -> Any:
    import torch

    return getattr(torch, _INT_OF_SIZE[size])


def decode(stored: Any, ref: VineyardReference) -> Any:
    """The polars or torch value behind ``ref`` from what ``client.get`` returned."""
    extra = ref.extra or {}
    if ref.type == "torch.Tensor":
        return _decode_tensor(stored, ref)
    import polars as pl

    table = restore_arrow(stored, extra)
    if ref.type == "polars.Series":
        # polars annotates from_arrow as DataFrame | Series, without overloads: an Arrow array gives a Series
        series = cast("pl.Series", pl.from_arrow(table.column(0), rechunk=False))
        return series.alias(extra.get("series_name") or "")
    return pl.from_arrow(table, rechunk=False)


def _decode_tensor(stored: Any, ref: VineyardReference) -> Any:
    import torch

    with warnings.catch_warnings():
        # "The given NumPy array is not writable": documented above (read-only rule).
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(stored)
    via = (ref.extra or {}).get("via")
    if via == "complex":
        return torch.view_as_complex(tensor)
    if via == "view":
        return tensor.view(getattr(torch, str(ref.dtype)))
    return tensor


def check(encoded: Encoded, value: Any, stored: Any, ref: VineyardReference) -> str | None:
    """The first difference between what was put and what Vineyard returned, or None.

    Tensors: dtype and shape of the zero-copy view. polars: the stored schema against the
    payload's, then the first :data:`HEAD_ROWS` rows as polars against the producer's.
    """
    if encoded.type == "torch.Tensor":
        got = decode(stored, ref)
        if got.dtype != value.dtype or tuple(got.shape) != tuple(value.shape):
            return f"got a tensor of dtype {got.dtype} and shape {tuple(got.shape)}"
        return None
    payload = encoded.payload
    if stored.num_rows != payload.num_rows or stored.schema.names != payload.schema.names:
        return f"got {stored.num_rows} rows, columns {stored.schema.names[:5]}"
    for want, got_field in zip(payload.schema, stored.schema, strict=True):
        if got_field.type not in (want.type, widen(want.type)):
            return f"column {want.name!r} has type {got_field.type} instead of {want.type}"
    rows = min(HEAD_ROWS, payload.num_rows)
    head = decode(stored.slice(0, rows), ref)
    want = value.head(rows)
    if encoded.type == "polars.Series":
        if head.dtype != want.dtype or head.name != want.name:
            return f"got Series {head.name!r} of dtype {head.dtype} instead of {want.name!r} {want.dtype}"
        same = head.equals(want, check_dtypes=True, check_names=True, null_equal=True)
    else:
        if head.schema != want.schema:
            return f"schema {dict(head.schema)} instead of {dict(want.schema)}"
        same = head.equals(want, null_equal=True)
    return None if same else "the first rows differ"
