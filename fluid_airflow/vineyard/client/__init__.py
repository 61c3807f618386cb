"""Calls on a vineyard client, bounded in time and size (:mod:`.calls`). The per-process client itself is
:class:`fluid_airflow.hooks.vineyard.VineyardHook`, where Airflow expects hooks."""
