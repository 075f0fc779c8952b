"""Derive the Modal batch and health URLs from the configured base endpoint.

Modal names each web endpoint by hostname (``{base}-parse-batch.modal.run``), which a
local stand-in on ``127.0.0.1`` cannot imitate, so a base that points at an IP
address, ``localhost``, a port or a path uses ``{base}/parse-batch`` and
``{base}/health`` instead. The same client code then talks to Modal and to the
simulator in ``bench/simulator.py``.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["modal_urls"]

_MODAL_SUFFIX = ".modal.run"
_ENDPOINT_SUFFIXES = ("-parse-batch", "-health")
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})


def _is_local_host(host: str) -> bool:
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def modal_urls(base: str) -> tuple[str, str]:
    """Return ``(parse_batch_url, health_url)`` for a Modal base endpoint.

    ``https://myorg--dolphin`` (or any of its ``-parse-batch.modal.run`` /
    ``-health.modal.run`` / ``.modal.run`` forms) gives the Modal hostnames; a base
    on an IP, ``localhost``, an explicit port or with a path gives path routes.
    A base without a scheme gets ``http://`` when local and ``https://`` otherwise.
    Raises ValueError for a blank base or one without a host.
    """
    text = base.strip()
    if not text:
        raise ValueError("Modal endpoint is empty")
    if "://" not in text:
        # Guess the scheme from the host so "localhost:8000" stays plain HTTP.
        bare_host = urlsplit(f"//{text}").hostname or ""
        text = f"{'http' if _is_local_host(bare_host) else 'https'}://{text}"
    text = text.rstrip("/")
    parts = urlsplit(text)
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"Modal endpoint {base!r} has no host")
    if parts.query or parts.fragment:
        raise ValueError(f"Modal endpoint {base!r} must not have a query or fragment")

    try:
        has_port = parts.port is not None
    except ValueError as exc:
        raise ValueError(f"Modal endpoint {base!r} has a bad port") from exc
    if has_port or parts.path or _is_local_host(host):
        return f"{text}/parse-batch", f"{text}/health"

    root = text
    if host.endswith(_MODAL_SUFFIX):
        # Hostnames are case-insensitive; cut by length so the user's spelling of
        # the app name survives.
        root = root[: -len(_MODAL_SUFFIX)]
        for suffix in _ENDPOINT_SUFFIXES:
            if root.lower().endswith(suffix):
                root = root[: -len(suffix)]
                break
    return f"{root}-parse-batch{_MODAL_SUFFIX}", f"{root}-health{_MODAL_SUFFIX}"
