"""A backend wrapper that counts what is asked of the real one.

Every call is counted by outcome (``ok``, ``batch_failed`` when the backend
rejected the batch's content, ``error`` when it failed otherwise), with the
calls running now as a gauge. Retries are counted where they happen: attempts
a backend made inside one call (reported as ``attempts`` in the outcome's
``extra``, or on the error), and calls that send again an image of an earlier
call that failed with ``error`` (images are known by identity, which a
requeued request keeps).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from stream.backends.base import (
    Backend,
    BackendError,
    BackendHealth,
    BatchItem,
    BatchOutcome,
)

from . import metrics

__all__ = ["InstrumentedBackend"]

# Images of failed calls remembered to recognise their retry; the references
# also keep ids from being reused while remembered.
_REMEMBERED_FAILED = 1024


class InstrumentedBackend:
    def __init__(self, backend: Backend) -> None:
        self.inner = backend
        self.name = backend.name
        self.in_flight = 0
        self._failed: OrderedDict[int, bytes] = OrderedDict()

    async def parse_batch(self, items: Sequence[BatchItem]) -> BatchOutcome:
        if any(id(item.image) in self._failed for item in items):
            metrics.BACKEND_RETRIES.inc()
            for item in items:
                self._failed.pop(id(item.image), None)
        self.in_flight += 1
        metrics.BATCHES_IN_FLIGHT.set(self.in_flight)
        try:
            outcome = await self.inner.parse_batch(items)
        except BackendError as exc:
            metrics.BACKEND_CALLS.labels(
                outcome="batch_failed" if exc.batch_failed else "error"
            ).inc()
            _count_inner_retries(getattr(exc, "attempts", 1))
            if not exc.batch_failed:
                self._remember_failed(items)
            raise
        except Exception:
            metrics.BACKEND_CALLS.labels(outcome="error").inc()
            self._remember_failed(items)
            raise
        finally:
            self.in_flight -= 1
            metrics.BATCHES_IN_FLIGHT.set(self.in_flight)
        metrics.BACKEND_CALLS.labels(outcome="ok").inc()
        _count_inner_retries(outcome.extra.get("attempts", 1))
        return outcome

    def _remember_failed(self, items: Sequence[BatchItem]) -> None:
        for item in items:
            self._failed[id(item.image)] = item.image
        while len(self._failed) > _REMEMBERED_FAILED:
            self._failed.popitem(last=False)

    async def health(self) -> BackendHealth:
        return await self.inner.health()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _count_inner_retries(attempts: object) -> None:
    if isinstance(attempts, int) and attempts > 1:
        metrics.BACKEND_RETRIES.inc(attempts - 1)
