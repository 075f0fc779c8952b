"""Which offsets are safe to commit, given answers that finish out of order.

A request is answered when its reply is produced and its result stored; batches
finish in any order, so answers do too. Kafka keeps one committed offset per
partition, meaning "everything below this is done". The ledger therefore commits
a partition only up to its oldest unanswered message:

    offsets received   40 41 42 43 44
    answered            x     x  x
    committable        41  (41 is still in flight; 42-44 wait behind it)

Offsets are tracked in the order the consumer returned them, not by arithmetic,
so gaps in a partition (compaction, transaction markers) never stall a commit.

A partition taken away by a rebalance gets a fresh ledger when it comes back;
tickets of the old one become inert, so a late answer cannot move the new
owner's position.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import TopicPartition

__all__ = ["OffsetLedger", "PartitionLedger", "Ticket"]


class PartitionLedger:
    """Messages of one partition that were received and not yet answered."""

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.active = True
        self.committed: int | None = None
        """The offset last committed to Kafka by this ledger."""
        self._order: deque[int] = deque()
        self._unanswered: set[int] = set()
        # Unanswered and still being worked on: not given back to Kafka.
        self._awaited: set[int] = set()
        self._next: int | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    def track(self, offset: int) -> Ticket:
        self._order.append(offset)
        self._unanswered.add(offset)
        self._awaited.add(offset)
        self._next = offset + 1
        self._drained.clear()
        return Ticket(self, offset)

    def release(self, offset: int) -> None:
        """The message was answered."""
        if not self.active or offset not in self._unanswered:
            return
        self._unanswered.discard(offset)
        # Only the head of the queue can move the commit position.
        while self._order and self._order[0] not in self._unanswered:
            self._order.popleft()
        self._give_up(offset)

    def _give_up(self, offset: int) -> None:
        self._awaited.discard(offset)
        if not self._awaited:
            self._drained.set()

    def abandon(self, offset: int) -> None:
        """The message will not be answered here; it keeps the commit below it."""
        if self.active:
            self._give_up(offset)

    @property
    def position(self) -> int | None:
        """Offset to commit: the oldest unanswered message, or the next one."""
        if self._order:
            return self._order[0]
        return self._next

    @property
    def unanswered(self) -> int:
        return len(self._unanswered)

    def committable(self) -> int | None:
        position = self.position
        if position is None or not self.active:
            return None
        if self.committed is not None and position <= self.committed:
            return None
        return position

    def close(self) -> None:
        """Make every ticket of this ledger inert."""
        self.active = False
        self._drained.set()

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait until no message is being worked on; False on timeout."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Ticket:
    """Proof that one message was received; release it once it is answered."""

    ledger: PartitionLedger
    offset: int

    @property
    def tp(self) -> TopicPartition:
        return self.ledger.tp

    @property
    def current(self) -> bool:
        """False once the partition was revoked after this message arrived."""
        return self.ledger.active

    def release(self) -> None:
        self.ledger.release(self.offset)

    def abandon(self) -> None:
        self.ledger.abandon(self.offset)


class OffsetLedger:
    """The partition ledgers of the current assignment."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, PartitionLedger] = {}

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            if tp not in self._partitions:
                self._partitions[tp] = PartitionLedger(tp)

    def revoke(self, tps: Iterable[TopicPartition]) -> list[PartitionLedger]:
        """Forget partitions; their ledgers are returned for a last commit.

        The ledgers stay active, so answers still in flight can release them,
        until the caller closes them.
        """
        return [self._partitions.pop(tp) for tp in tps if tp in self._partitions]

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self._partitions

    def get(self, tp: TopicPartition) -> PartitionLedger | None:
        return self._partitions.get(tp)

    def track(self, tp: TopicPartition, offset: int) -> Ticket:
        ledger = self._partitions.get(tp)
        if ledger is None:
            # A record of a partition we no longer own still needs a ticket, one
            # that can never commit anything.
            ledger = PartitionLedger(tp)
            ledger.active = False
        return ledger.track(offset)

    def committable(self) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = {}
        for tp, ledger in self._partitions.items():
            offset = ledger.committable()
            if offset is not None:
                offsets[tp] = offset
        return offsets

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            ledger = self._partitions.get(tp)
            if ledger is not None:
                ledger.committed = offset

    @property
    def partitions(self) -> list[TopicPartition]:
        return list(self._partitions)

    @property
    def unanswered(self) -> int:
        return sum(ledger.unanswered for ledger in self._partitions.values())
