"""The flights DAG with every hand-off a pandas DataFrame, so Airflow's own XCom backends can run it.

``dags/flights_delay_regression.py`` hands over an Arrow Table (weather) and float64 ndarrays
(X, y, the train/test split); Airflow's serde, and with it the default and the object-storage
XCom backends, cannot carry either (``TypeError: ... not JSON serializable``). This DAG runs the
**same task functions** (imported from that file, which must be importable but not in the same
DAGs folder: importing it also defines its DAG, which Airflow would see twice) and
only changes what crosses task boundaries: the weather table, X, y and the split travel as
DataFrames, the 29 coefficients as a list. The benchmark runs it with both backends.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, task
from flights_delay_regression import (
    SEED,
    build_feature_matrix,
    clean_flights,
    evaluate_linear,
    fit_linear,
    join_weather_frame,
    load_flights_frame,
    load_weather_table,
    split_train_test,
)


@dag(
    dag_id="flights_delay_regression_frames",
    schedule=None,
    catchup=False,
    tags=["fluid-airflow", "benchmark"],
    params={
        "scale": Param(1, type="integer", minimum=1, description="Repeat the flights rows this many times."),
    },
    doc_md=__doc__,
)
def flights_delay_regression_frames():
    @task
    def load_flights(**context: Any):
        return load_flights_frame(int(context["params"]["scale"]))

    @task
    def load_weather():
        return load_weather_table().to_pandas()

    @task
    def clean(flights):
        return clean_flights(flights)

    @task
    def join_weather(flights, weather):
        import pyarrow as pa

        return join_weather_frame(flights, pa.Table.from_pandas(weather, preserve_index=False))

    @task(multiple_outputs=True)
    def build_features(df):
        import pandas as pd

        X, y, names = build_feature_matrix(df)
        return {"X": pd.DataFrame(X, columns=names), "y": pd.DataFrame({"y": y}), "feature_names": names}

    @task(multiple_outputs=True)
    def split(X, y):
        import pandas as pd

        X_train, X_test, y_train, y_test = split_train_test(X.to_numpy(), y["y"].to_numpy())
        print(f"split: train {X_train.shape}, test {X_test.shape} (seed={SEED})")
        return {
            "X_train": pd.DataFrame(X_train, columns=X.columns),
            "X_test": pd.DataFrame(X_test, columns=X.columns),
            "y_train": pd.DataFrame({"y": y_train}),
            "y_test": pd.DataFrame({"y": y_test}),
        }

    @task
    def fit(X_train, y_train):
        return fit_linear(X_train.to_numpy(), y_train["y"].to_numpy()).tolist()

    @task(multiple_outputs=False)
    def evaluate(coef, X_test, y_test):
        import numpy as np

        return evaluate_linear(np.asarray(coef), X_test.to_numpy(), y_test["y"].to_numpy())

    @task(multiple_outputs=False)
    def report(metrics, coef, feature_names):
        print(f"RMSE {metrics['rmse']:.2f} min, R^2 {metrics['r2']:.3f}, {len(coef) - 1} weights")
        return metrics

    features = build_features(join_weather(clean(load_flights()), load_weather()))
    parts = split(features["X"], features["y"])
    coef = fit(parts["X_train"], parts["y_train"])
    metrics = evaluate(coef, parts["X_test"], parts["y_test"])
    report(metrics, coef, features["feature_names"])


flights_delay_regression_frames()
