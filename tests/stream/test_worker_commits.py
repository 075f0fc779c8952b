"""The offset ledger: what may be committed while answers finish out of order."""

from __future__ import annotations

from aiokafka import TopicPartition

from stream.commits import OffsetLedger

TP = TopicPartition("requests", 0)


def test_commit_stops_at_the_oldest_unanswered_message() -> None:
    """Answers after a gap wait behind it; the gap's answer releases them all."""
    ledger = OffsetLedger()
    ledger.assign([TP])
    tickets = {offset: ledger.track(TP, offset) for offset in range(40, 45)}

    for offset in (40, 42, 43, 44):
        tickets[offset].release()
    assert ledger.committable() == {TP: 41}

    tickets[41].release()
    assert ledger.committable() == {TP: 45}


def test_nothing_is_committed_while_the_first_message_is_in_flight() -> None:
    """A fresh partition commits nothing until its first message is answered."""
    ledger = OffsetLedger()
    ledger.assign([TP])
    first = ledger.track(TP, 0)
    ledger.track(TP, 1).release()
    assert ledger.committable() == {TP: 0}
    ledger.mark_committed({TP: 0})
    assert ledger.committable() == {}
    first.release()
    assert ledger.committable() == {TP: 2}


def test_offset_gaps_do_not_stall_commits() -> None:
    """Offsets missing from the log (compaction, markers) are not waited for."""
    ledger = OffsetLedger()
    ledger.assign([TP])
    for offset in (10, 11, 15, 20):
        ledger.track(TP, offset).release()
    assert ledger.committable() == {TP: 21}


def test_a_given_back_message_keeps_blocking_the_commit_but_not_the_drain() -> None:
    """An abandoned message lets revocation stop waiting, yet is never
    committed, so the partition's next owner consumes it again."""
    ledger = OffsetLedger()
    ledger.assign([TP])
    waiting = ledger.track(TP, 5)
    ledger.track(TP, 6).release()
    partition = ledger.get(TP)
    assert partition is not None

    waiting.abandon()
    assert partition.unanswered == 1
    assert ledger.committable() == {TP: 5}


async def test_revoked_partition_tickets_become_inert_once_closed() -> None:
    """After revocation a late answer cannot move the position of the
    partition's next ledger."""
    ledger = OffsetLedger()
    ledger.assign([TP])
    late = ledger.track(TP, 7)
    (old,) = ledger.revoke([TP])
    assert await old.wait_drained(0.01) is False
    old.close()

    ledger.assign([TP])
    ledger.track(TP, 7)
    late.release()
    assert ledger.committable() == {TP: 7}


def test_records_of_unowned_partitions_get_tickets_that_commit_nothing() -> None:
    """A message of a partition no longer assigned is tracked nowhere."""
    ledger = OffsetLedger()
    ticket = ledger.track(TP, 3)
    ticket.release()
    assert not ticket.current
    assert ledger.committable() == {}
