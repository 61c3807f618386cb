"""A value <-> what Vineyard holds: codecs (numpy, pandas, polars, Arrow, tensors), inline values, trees of
per-item rows, the JSON reference an XCom row keeps, and object names scoped to the DAG run. No client
calls here: the layers above pass the client in."""
