"""The requests waiting for a batch, in the order batches take them.

Entries are kept sorted by due time: the earlier of the request's deadline and
its latency target (counted from when it entered). The target is the same for
every request, so this is first-come-first-served unless a deadline is
tighter, and it never reorders as time passes. Requests put back after a
failed batch regain their place.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from stream.batching.types import Pending


@dataclass(slots=True, eq=False)
class Entry:
    """A request inside the batcher; times are on the batcher's monotonic clock."""

    pending: Pending
    arrived_s: float
    start_s: float
    """Where its latency target is counted from (entry into the system)."""
    deadline_s: float
    due_s: float = field(init=False)
    latency_target_s: float = 0.0

    def __post_init__(self) -> None:
        self.due_s = min(self.start_s + self.latency_target_s, self.deadline_s)

    @classmethod
    def of(
        cls, pending: Pending, now_s: float, wall_s: float, latency_target_s: float
    ) -> Entry:
        """``pending`` as it arrives at monotonic ``now_s`` (wall time ``wall_s``)."""
        start_s = now_s
        if pending.accepted_s is not None:
            start_s = min(now_s, now_s - (wall_s - pending.accepted_s))
        return cls(
            pending,
            arrived_s=now_s,
            start_s=start_s,
            deadline_s=now_s + (pending.deadline_s - wall_s),
            latency_target_s=latency_target_s,
        )

    @property
    def request_id(self) -> str:
        return self.pending.request_id

    @property
    def size_bytes(self) -> int:
        return self.pending.size_bytes


class WaitingQueue:
    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._bytes = 0
        # Earliest deadline, recomputed lazily after removals.
        self._next_deadline_s: float | None = math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    @property
    def entries(self) -> Sequence[Entry]:
        return self._entries

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def add(self, entry: Entry) -> None:
        bisect.insort_right(self._entries, entry, key=lambda e: e.due_s)
        self._bytes += entry.size_bytes
        if self._next_deadline_s is not None:
            self._next_deadline_s = min(self._next_deadline_s, entry.deadline_s)

    def extend(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.add(entry)

    def take(self, indices: Collection[int]) -> list[Entry]:
        """Remove and return the entries at ``indices``, in that order."""
        taken = [self._entries[i] for i in indices]
        drop = set(indices)
        self._keep(lambda i, _: i not in drop)
        return taken

    def remove_where(self, predicate: Callable[[Entry], bool]) -> list[Entry]:
        removed = [e for e in self._entries if predicate(e)]
        if removed:
            gone = {id(e) for e in removed}
            self._keep(lambda _, e: id(e) not in gone)
        return removed

    def next_deadline_s(self) -> float:
        if self._next_deadline_s is None:
            self._next_deadline_s = min(
                (e.deadline_s for e in self._entries), default=math.inf
            )
        return self._next_deadline_s

    def _keep(self, keep: Callable[[int, Entry], bool]) -> None:
        self._entries = [e for i, e in enumerate(self._entries) if keep(i, e)]
        self._bytes = sum(e.size_bytes for e in self._entries)
        self._next_deadline_s = None
