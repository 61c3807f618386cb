"""pytest fixtures of the real control plane. Import them into a conftest or a test module: ``from
controlplane.fixtures import control_plane  # noqa: F401``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .cluster import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One control plane for the whole session (built first if the cache lacks it; warm start well under a
    minute). Every daemon is stopped by process id and its temporary folder removed at the end."""
    plane = ControlPlane().start()
    try:
        yield plane
    finally:
        plane.stop()
