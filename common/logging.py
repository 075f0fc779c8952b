"""JSON-lines logging with request and batch ids carried by context variables.

Call ``bind(request_id=...)`` once where a request enters; every log line written
further down the same task, however deep, carries the id without passing it by
hand. ``configure()`` is called once at process start.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson

# Never mutated in place: bind() sets a new dict, so an immutable default is safe.
_EMPTY: dict[str, Any] = {}
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "dolphin_log_context", default=_EMPTY
)

# Attributes every LogRecord has; anything else came through ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}


def bind(**fields: Any) -> contextvars.Token[dict[str, Any]]:
    """Add fields to every log line of the current task and its children."""
    return _context.set({**_context.get(), **fields})


def unbind(token: contextvars.Token[dict[str, Any]]) -> None:
    _context.reset(token)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get())


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "component": self.component,
            "event": record.getMessage(),
        }
        line.update(_context.get())
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRS and not name.startswith("_"):
                line[name] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {**_context.get()}
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRS and not name.startswith("_"):
                fields[name] = value
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        text = f"{record.levelname:<7} {record.name}: {record.getMessage()} {tail}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text.rstrip()


def configure(level: str, fmt: str, component: str) -> None:
    """Send every logger's records to stderr as JSON lines (or text)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries chatter at info; keep their warnings.
    noisy_loggers = (
        "aiokafka", "kafka", "faust", "mode", "httpx", "httpcore", "PIL",
        "uvicorn.access",
    )  # fmt: skip
    for noisy in noisy_loggers:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
