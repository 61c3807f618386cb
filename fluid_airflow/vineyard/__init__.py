"""Everything Vineyard, by layer (imports flow downwards only; docs/architecture.md):

- :mod:`.xcom` — the XCom backend Airflow calls; :mod:`.store` puts and gets one value.
- :mod:`.lifecycle` — what is held and for how long: release, gc, inventory, admission, put journal,
  copies across instances, the Airflow DB queries.
- :mod:`.data` — a value <-> what Vineyard holds and the JSON reference in the XCom row (codec, trees,
  names).
- :mod:`.local` — the local daemons: vineyardd, etcd, a local cluster of instances.
- :mod:`.client` — bounded calls on a vineyard client (the client itself:
  :mod:`fluid_airflow.hooks.vineyard`).
"""
