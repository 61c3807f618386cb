"""Byte quantities in messages (the lowest layer: imported anywhere, imports nothing of ours)."""

from __future__ import annotations


def format_bytes(n: int) -> str:
    """``n`` bytes as a short binary quantity for messages, e.g. ``1.50 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
