"""Airflow plugins shipped by the provider (registered through the provider info ``plugins`` key)."""
