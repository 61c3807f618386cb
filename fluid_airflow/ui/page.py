"""The handoffs page: ``handoffs.html``, one HTML document with a little plain JavaScript (no build step).

It calls the JSON API next to it (``api/handoffs``, ``api/release/...``: relative URLs, so it
works under any ``[api] base_url`` path) with the browser's Airflow session cookie.
"""

from importlib.resources import files

HTML = files(__package__).joinpath("handoffs.html").read_text(encoding="utf-8")
