"""Test DAG: every supported type goes through Airflow and the backend, and comes back equal,
dtypes included (pandas 2 or 3, whichever is installed; polars and torch when installed)."""

from __future__ import annotations

import importlib.util

from airflow.sdk import dag, task

KINDS = [
    "ndarray",
    "df_mixed",
    "df_extension",
    "df_multiindex",
    "series",
    "arrow_table",
    "arrow_array",
    "df_strings",
    "df_shared_strings",
    "df_decimal",
]
# Optional extras: only where the package is installed (parse time: a spec lookup, no import).
OPTIONAL = (("polars_df", "polars"), ("torch_tensor", "torch"))
KINDS += [kind for kind, module in OPTIONAL if importlib.util.find_spec(module)]


def build(kind: str):
    """Deterministic value for ``kind`` (imports inside: this runs in tasks, not at parse time)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if kind == "ndarray":
        return np.random.default_rng(3).random((500, 4))
    if kind == "df_mixed":
        return pd.DataFrame(
            {
                "x": np.arange(4.0),
                "s": ["a", "b", None, "d"],
                "t": pd.date_range("2024-01-01", periods=4, tz="UTC"),
            },
            index=pd.Index(["w", "x", "y", "z"], name="key"),
        )
    if kind == "df_extension":
        return pd.DataFrame(
            {
                "c": pd.Categorical(["lo", "hi", "lo", "hi"]),
                "n": pd.array([1, None, 3, 4], dtype="Int64"),
                "s": pd.array(["p", None, "q", "r"], dtype="string"),
            }
        )
    if kind == "df_multiindex":
        return pd.DataFrame({"a": [1, 1, 2], "b": ["x", "y", "x"], "v": [0.5, 1.5, 2.5]}).set_index(
            ["a", "b"]
        )
    if kind == "series":
        return pd.Series([1.5, 2.5], index=pd.date_range("2024-01-01", periods=2), name="price")
    if kind == "arrow_table":
        return pa.table({"id": [1, 2, 3], "name": ["a", "b", None], "tags": [["x"], [], ["y", "z"]]})
    if kind == "arrow_array":
        return pa.array(["u", None, "w"])
    if kind == "df_strings":  # every string flavour, each with a null
        cells = ["a", None, "c"]
        return pd.DataFrame(
            {
                "object": pd.Series(cells, dtype=object),
                "python": pd.Series(cells, dtype="string[python]"),
                "pyarrow": pd.Series(cells, dtype="string[pyarrow]"),
                "str": pd.Series(cells, dtype=pd.StringDtype("pyarrow", na_value=np.nan)),  # pandas 3's str
                "arrow": pd.Series(cells, dtype=pd.ArrowDtype(pa.large_string())),
            }
        )
    if kind == "df_shared_strings":  # object cells sharing 3 objects: stored as a dictionary
        column = np.array(["AA", "B6", None], dtype=object)[np.arange(70_000) % 3]
        return pd.DataFrame({"carrier": pd.Series(column, dtype=object), "v": np.arange(70_000.0)})
    if kind == "df_decimal":
        import decimal

        return pd.DataFrame({"d": pd.Series([decimal.Decimal("1.25"), None], dtype=object)})
    if kind == "polars_df":
        import polars as pl

        return pl.DataFrame({"x": [1.5, None, 3.0], "s": ["p", None, "r"]})
    if kind == "torch_tensor":
        import torch

        return torch.arange(12, dtype=torch.float32).reshape(3, 4)
    raise ValueError(kind)


def same(kind: str, got) -> bool:
    import numpy as np
    import pandas as pd

    want = build(kind)
    module = type(want).__module__.split(".")[0]
    if module == "polars":
        assert got.equals(want, null_equal=True) and got.schema == want.schema, (got, want)
    elif module == "torch":
        assert type(got) is type(want) and got.dtype == want.dtype and bool((got == want).all())
    elif isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want)
        assert list(got.dtypes) == list(want.dtypes), (list(got.dtypes), list(want.dtypes))
    elif isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want)
    elif isinstance(want, np.ndarray):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    else:
        assert type(got) is type(want) and got.equals(want), (got, want)
    return True


@dag(dag_id="fa_types", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_types():
    @task
    def make(kind: str):
        return build(kind)

    @task
    def check(values) -> dict:
        return {kind: same(kind, value) for kind, value in zip(KINDS, values, strict=True)}

    check(make.expand(kind=KINDS))


fa_types()
