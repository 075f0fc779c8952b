"""``dolphin status``: the API's health and queue, readable at a glance."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

UNHEALTHY = frozenset({"unhealthy", "unavailable", "down", "error", "failed"})

Rows = list[tuple[str, str]]
Records = dict[str, list[dict[str, Any]]]


def flatten(value: Any, prefix: str = "") -> tuple[Rows, Records]:
    """Dotted key and printable value of each leaf of a JSON document.

    Lists of objects, such as the lag of each partition, are returned apart
    by their dotted key, to be shown as tables of their own.
    """
    rows: Rows = []
    records: Records = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            inner_rows, inner_records = flatten(
                inner, f"{prefix}.{key}" if prefix else key
            )
            rows.extend(inner_rows)
            records.update(inner_records)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        records[prefix] = value
    elif isinstance(value, list):
        rows.append((prefix, ", ".join(_show(v) for v in value) or "-"))
    else:
        rows.append((prefix or "value", _show(value)))
    return rows, records


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if value is None:
        return "-"
    return str(value)


def is_healthy(response: httpx.Response) -> bool:
    if response.status_code != 200:
        return False
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return True
    status = body.get("status") if isinstance(body, dict) else None
    return not (isinstance(status, str) and status.lower() in UNHEALTHY)


def _tables(title: str, response: httpx.Response) -> list[Table]:
    main = Table(title=f"{title}  (HTTP {response.status_code})", title_justify="left")
    main.add_column("field")
    main.add_column("value", overflow="fold")
    try:
        rows, records = flatten(orjson.loads(response.content))
    except orjson.JSONDecodeError:
        rows, records = [("body", response.text[:500])], {}
    for key, value in rows:
        main.add_row(key, value)

    tables = [main]
    for key, items in records.items():
        table = Table(title=f"{title}: {key}", title_justify="left")
        columns = list(dict.fromkeys(name for item in items for name in item))
        for name in columns:
            table.add_column(name, justify="right")
        for item in items:
            table.add_row(*(_show(item.get(name)) for name in columns))
        tables.append(table)
    return tables


async def show_status(
    url: str, *, headers: dict[str, str], timeout_s: float, console: Console
) -> int:
    """Print GET /health and GET /queue/status; 0 when healthy, else 1."""
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=timeout_s
    ) as client:
        try:
            health = await client.get("/health")
        except httpx.TransportError as exc:
            console.print(
                f"[bold red]cannot reach the API at {url}: is the stack up? "
                f"(./dev up)[/]  ({exc!r})",
                highlight=False,
            )
            return 1
        for table in _tables("health", health):
            console.print(table)
        try:
            queue = await client.get("/queue/status")
        except httpx.TransportError as exc:
            console.print(f"[yellow]GET /queue/status failed: {exc!r}[/]")
        else:
            for table in _tables("queue", queue):
                console.print(table)

    healthy = is_healthy(health)
    verdict = "[bold green]healthy[/]" if healthy else "[bold red]unhealthy[/]"
    console.print(f"{url}: {verdict}", highlight=False)
    return 0 if healthy else 1
